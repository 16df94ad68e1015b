"""Where the SDK and the CLI find the API URL and the caller's credentials.

Priority, highest first: explicit arguments, ``ALTO_*`` environment variables, then a
profile of the credentials file. The URL and the tenant are taken field by field, but the
*authentication* comes whole from the first source that has any (a token, or a key id with
its secret): mixing a token from one place with a key from another would sign requests
as somebody nobody asked for.

The file is TOML, one table per profile, written with mode 0600::

    [default]
    url = "http://127.0.0.1:8080"
    tenant = "system"
    token = "…"

Within one profile a token wins over an API key: ``alto login`` adds a token next to a
saved key, and ``alto logout`` removes the token so the key takes over again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from altostack.client.errors import ConfigurationError

DEFAULT_PROFILE = "default"
FIELDS = ("url", "tenant", "username", "token", "access_key_id", "secret_access_key")
ENV = {
    "url": "ALTO_URL",
    "tenant": "ALTO_TENANT",
    "token": "ALTO_TOKEN",
    "access_key_id": "ALTO_ACCESS_KEY_ID",
    "secret_access_key": "ALTO_SECRET_ACCESS_KEY",
}
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEADER_COMMENT = "# Altostack credentials (written by `alto`). Keep private: mode 0600.\n"


@dataclass(frozen=True)
class Credentials:
    """A resolved URL plus at most one way to authenticate."""

    url: str | None = None
    token: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    tenant: str | None = None
    username: str | None = None
    profile: str = DEFAULT_PROFILE
    source: str = "none"

    @property
    def auth_kind(self) -> str | None:
        """``"token"``, ``"api-key"`` or None; the rule of the module docstring."""
        if self.token:
            return "token"
        if self.access_key_id and self.secret_access_key:
            return "api-key"
        return None

    def __repr__(self) -> str:  # secrets never end up in a traceback or a log line
        return (
            f"Credentials(url={self.url!r}, auth={self.auth_kind!r}, tenant={self.tenant!r}, "
            f"profile={self.profile!r}, source={self.source!r})"
        )


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    """``$ALTO_CREDENTIALS_FILE``, else ``$XDG_CONFIG_HOME/altostack/credentials``,
    else ``~/.config/altostack/credentials``."""
    env = os.environ if env is None else env
    if env.get("ALTO_CREDENTIALS_FILE"):
        return Path(env["ALTO_CREDENTIALS_FILE"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "altostack" / "credentials"


def profile_name(profile: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    name = profile or env.get("ALTO_PROFILE") or DEFAULT_PROFILE
    if not _PROFILE_NAME.match(name):
        raise ConfigurationError(
            f"invalid profile name {name!r}: use 1-64 letters, digits, '-' or '_'"
        )
    return name


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    """Every profile in the file (an absent file has none)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read credentials file {path}: {exc}") from exc
    return {
        str(name): {k: str(v) for k, v in table.items() if k in FIELDS and v is not None}
        for name, table in data.items()
        if isinstance(table, dict)
    }


def _dump(profiles: Mapping[str, Mapping[str, str]]) -> str:
    parts = [_HEADER_COMMENT]
    for name, table in profiles.items():
        parts.append(f"\n[{name}]\n")
        for key in FIELDS:
            if table.get(key):
                # A JSON string is a valid TOML basic string (same escapes).
                parts.append(f"{key} = {json.dumps(table[key])}\n")
    return "".join(parts)


def write_profiles(path: Path, profiles: Mapping[str, Mapping[str, str]]) -> None:
    """Replace the file atomically; it is created 0600 so a secret is never readable by
    others, not even for the instant between create and chmod."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_dump(profiles))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.chmod(path, 0o600)


def update_profile(
    profile: str | None,
    *,
    env: Mapping[str, str] | None = None,
    **values: str | None,
) -> Path:
    """Set (or, with None, remove) fields of one profile, keeping everything else."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown credential fields: {sorted(unknown)}")
    path = credentials_path(env)
    name = profile_name(profile, env)
    profiles = read_profiles(path)
    table = dict(profiles.get(name, {}))
    for key, value in values.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    profiles[name] = table
    write_profiles(path, profiles)
    return path


def _pick(source: Mapping[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in source.items() if v}


def _has_auth(values: Mapping[str, str]) -> bool:
    return bool(values.get("token") or values.get("access_key_id"))


def load_credentials(
    url: str | None = None,
    *,
    token: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    tenant: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials:
    """Resolve credentials by the priority of the module docstring."""
    env = os.environ if env is None else env
    name = profile_name(profile, env)
    explicit = _pick(
        {
            "url": url,
            "token": token,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "tenant": tenant,
        }
    )
    from_env = _pick({field: env.get(var) for field, var in ENV.items()})
    from_file = read_profiles(credentials_path(env)).get(name, {})
    sources = [("arguments", explicit), ("environment", from_env), ("file", from_file)]

    def first(field: str) -> str | None:
        return next((values[field] for _, values in sources if values.get(field)), None)

    creds = Credentials(
        url=first("url"),
        tenant=first("tenant"),
        username=from_file.get("username"),
        profile=name,
    )
    for source, values in sources:
        if _has_auth(values):
            return _with_auth(creds, source, values)
    return creds


def _with_auth(creds: Credentials, source: str, values: Mapping[str, str]) -> Credentials:
    if values.get("token"):
        return replace(creds, token=values["token"], source=source)
    if not values.get("secret_access_key"):
        raise ConfigurationError(
            f"an access key id without its secret access key in the {source}; "
            "set both (ALTO_ACCESS_KEY_ID and ALTO_SECRET_ACCESS_KEY) or neither"
        )
    return replace(
        creds,
        access_key_id=values["access_key_id"],
        secret_access_key=values["secret_access_key"],
        source=source,
    )
