"""Which user QEMU drops to: the dedicated one only where the host allows it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from altostack.drivers.compute.qemu_host import choose_run_as


def test_configured_values_are_taken_as_given(tmp_path: Path) -> None:
    assert choose_run_as(tmp_path, "") == (None, "disabled by configuration")
    assert choose_run_as(tmp_path, "nobody") == ("nobody", "configured")


@pytest.mark.skipif(os.geteuid() != 0, reason="the dedicated user is only made by root")
def test_auto_uses_the_dedicated_user_only_where_it_can_reach_the_state() -> None:
    root = Path(tempfile.mkdtemp(prefix="alto-runas-"))  # /tmp itself: searchable by all
    try:
        root.chmod(0o711)
        assert choose_run_as(root / "qemu", "auto") == ("alto-qemu", "the host allows it")
        closed = root / "home"
        closed.mkdir(mode=0o700)
        user, why = choose_run_as(closed / "qemu", "auto")
        assert user is None and "cannot reach" in why
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the dedicated user is possible")
def test_auto_without_root_keeps_the_agents_user(tmp_path: Path) -> None:
    assert choose_run_as(tmp_path, "auto")[0] is None
