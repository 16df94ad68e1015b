"""Network namespaces for tests: made with a unique name, always removed.

Removing a namespace destroys every interface inside it, so a test that puts all its
devices in namespaces it made cannot leak links, whatever happens. Names start with
``alto-t`` so a leftover from a killed run is recognisable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

from tests.support.real import need_real


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 is not installed"
    return None


@contextlib.contextmanager
def host_namespace(tag: str) -> Iterator[str]:
    """A fresh namespace named ``alto-t<tag>-<random>``, removed on exit."""
    reason = _can_make_namespaces()
    if reason is not None:
        need_real(reason)
    from pyroute2 import netns

    name = f"alto-t{tag}-{secrets.token_hex(3)}"
    try:
        netns.create(name)
    except OSError as exc:
        need_real(f"cannot create a network namespace: {exc}")
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            netns.remove(name)
