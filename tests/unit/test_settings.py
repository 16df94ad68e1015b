"""One typed settings object: keyword arguments > ALTO_* environment > TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from altostack.settings import Settings, mask_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ALTO_") and name != "ALTO_REQUIRE_REAL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults_are_an_embedded_all_in_one(tmp_path: Path):
    s = Settings()
    assert s.data_dir == tmp_path / "xdg" / "altostack"
    assert s.database_url == f"sqlite+aiosqlite:///{s.data_dir / 'altostack.db'}"
    assert s.bus == "memory://"
    assert s.plugins == []
    assert s.bootstrap_admin_password is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tests.support.slow_ops", ["tests.support.slow_ops"]),
        ("a.b, c.d ,", ["a.b", "c.d"]),
        ('["a.b", "c.d"]', ["a.b", "c.d"]),
        ("", []),
    ],
)
def test_plugins_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list):
    monkeypatch.setenv("ALTO_PLUGINS", raw)
    assert Settings().plugins == expected


def test_environment_values_are_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("ALTO_OPERATION_LEASE_SECONDS", "2")
    monkeypatch.setenv("ALTO_PORT", "9000")
    monkeypatch.setenv("ALTO_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("ALTO_BOOTSTRAP_ADMIN_PASSWORD", "Secret-Pass-1")
    s = Settings()
    assert s.operation_lease_seconds == 2.0
    assert s.port == 9000
    assert s.data_dir == tmp_path / "d"
    assert s.bootstrap_admin_password is not None
    assert s.bootstrap_admin_password.get_secret_value() == "Secret-Pass-1"
    monkeypatch.setenv("ALTO_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_priority_keyword_then_environment_then_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    config = tmp_path / "alto.toml"
    config.write_text('port = 7000\nhost = "0.0.0.0"\nworker_concurrency = 3\n')
    monkeypatch.setenv("ALTO_CONFIG", str(config))
    monkeypatch.setenv("ALTO_PORT", "7100")
    s = Settings()
    assert (s.host, s.port, s.worker_concurrency) == ("0.0.0.0", 7100, 3)
    assert Settings(port=7200).port == 7200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 70000),
        ("operation_lease_seconds", 0),
        ("worker_concurrency", 0),
        ("operation_max_attempts", 0),
        ("log_format", "xml"),
        ("driver", "vmware"),
    ],
)
def test_bad_values_are_refused(field: str, value: object):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_short_idempotency_ttl_is_allowed_for_tests():
    assert Settings(idempotency_ttl_seconds=1).idempotency_ttl_seconds == 1


def test_masked_hides_secrets_and_url_passwords():
    s = Settings(
        db="postgresql+asyncpg://alto:hunter2@db.example:5432/alto",
        bus="nats://alto:natspass@nats.example:4222",
        bootstrap_admin_password="Admin-Pass-1",
    )
    shown = s.masked()
    text = repr(shown)
    assert "hunter2" not in text
    assert "natspass" not in text
    assert shown["bus"] == "nats://alto:********@nats.example:4222"
    assert "Admin-Pass-1" not in text
    assert shown["bootstrap_admin_password"] == "********"
    assert shown["db"] == "postgresql+asyncpg://alto:********@db.example:5432/alto"
    assert shown["database_url"] == shown["db"]
    assert "Admin-Pass-1" not in repr(s) and "Admin-Pass-1" not in str(s)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h/db", "postgresql://u:********@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:********@h/db"),
        ("nats://token@h:4222", "nats://token@h:4222"),
        ("sqlite+aiosqlite:////var/lib/alto.db", "sqlite+aiosqlite:////var/lib/alto.db"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url: str, shown: str):
    assert mask_url(url) == shown


def test_start_banner_hides_bus_password(tmp_path: Path):
    from types import SimpleNamespace

    from altostack.server import banner

    s = Settings(data_dir=tmp_path, bus="nats://alto:natspass@nats.example:4222")
    text = banner(SimpleNamespace(settings=s, bootstrap_password=None, agents=[]))  # type: ignore[arg-type]
    assert "natspass" not in text


def test_driver_auto_picks_qemu_where_it_is_installed(monkeypatch: pytest.MonkeyPatch):
    from altostack import allinone

    assert Settings().driver == "auto"
    assert allinone.resolve_driver("sim") == "sim"
    assert allinone.resolve_driver("qemu") == "qemu"
    monkeypatch.setattr(allinone, "qemu_binary", lambda arch: None)
    assert allinone.resolve_driver("auto") == "sim"
    monkeypatch.setattr(allinone, "qemu_binary", lambda arch: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(allinone.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert allinone.resolve_driver("auto") == "qemu"
