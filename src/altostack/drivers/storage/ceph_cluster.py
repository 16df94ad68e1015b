"""The ``ceph`` backend's link to a cluster: settings, the connection, health, typed errors.

Kept apart from the driver so the one place where librados/librbd exceptions become
:mod:`altostack.drivers.errors` is small and obvious, and so the driver never sees a
credential: the connection is opened from :class:`CephConfig` (a host's per-cluster
configuration, never part of an API response) and only the pool handle leaves this module.

Timeouts are set on the connection itself (``rados_osd_op_timeout``,
``rados_mon_op_timeout``, ``client_mount_timeout``): without them a cluster that lost
quorum or two of three replicas makes every call hang forever. With them the call fails
with ``ETIMEDOUT``, which becomes :class:`DriverTimeout`.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    DriverTimeout,
    InsufficientResources,
    InvalidState,
)
from altostack.drivers.storage.base import PoolHealth

__all__ = [
    "CephConfig", "available", "connect", "health", "mon_json", "pool_capacity", "rados", "rbd",
    "translate", "translated",
]  # fmt: skip

try:  # Debian's python3-rados/python3-rbd: importable from a --system-site-packages venv
    import rados
    import rbd
except ImportError:  # pragma: no cover - the driver reports it when used
    rados = None
    rbd = None


@dataclass(frozen=True)
class CephConfig:
    """How a host reaches one RBD pool: per-cluster host configuration, never in the API."""

    pool: str = "rbd"
    conf_path: Path = Path("/etc/ceph/ceph.conf")
    client_id: str = "admin"
    """The cephx user without ``client.`` (``--id``); its key comes from ``keyring``."""
    keyring: Path | None = None
    """Default: what the conf file names (``/etc/ceph/ceph.client.<id>.keyring``)."""
    namespace: str = ""
    """An RBD namespace inside the pool ('' = the default); created when missing."""
    op_timeout: float = 30.0
    """Seconds an OSD or monitor operation may take before it fails instead of hanging."""
    work_dir: Path | None = None
    """Where image uploads are spooled before they go into RBD (default: the temp dir)."""


def available() -> bool:
    return rados is not None and rbd is not None


def connect(config: CephConfig) -> tuple[Any, Any]:
    """A connected ``rados.Rados`` and an ``Ioctx`` on the pool (and namespace)."""
    if not available():
        raise BackendFailure(
            "the ceph storage backend needs python3-rados and python3-rbd (Debian packages; "
            "the venv must be made with --system-site-packages from /usr/bin/python3)"
        )
    timeout = str(int(max(1, config.op_timeout)))
    conf: dict[str, str] = {
        "rados_osd_op_timeout": timeout,
        "rados_mon_op_timeout": timeout,
        "client_mount_timeout": timeout,
        "rbd_default_clone_format": "2",  # clones of unprotected snapshots; trash on delete
        "rbd_cache": "false",  # a write is on the OSDs when it returns
    }
    if config.keyring is not None:
        conf["keyring"] = str(config.keyring)
    with translated("connecting to the Ceph cluster"):
        cluster = rados.Rados(conffile=str(config.conf_path), rados_id=config.client_id, conf=conf)
        try:
            cluster.connect(timeout=int(timeout))
            ioctx = cluster.open_ioctx(config.pool)
            if config.namespace:
                if not rbd.RBD().namespace_exists(ioctx, config.namespace):
                    with contextlib.suppress(rbd.ImageExists, rbd.ObjectExists):
                        rbd.RBD().namespace_create(ioctx, config.namespace)
                ioctx.set_namespace(config.namespace)
        except BaseException:
            cluster.shutdown()
            raise
    return cluster, ioctx


def translate(what: str, exc: Exception) -> DriverError:
    """The typed error for a librados/librbd exception raised while doing ``what``.

    Both bindings' exceptions carry the errno, as an OSError does; it decides the type.
    """
    if isinstance(exc, DriverError):
        return exc
    text = f"{what}: {type(exc).__name__}: {exc}"
    code = getattr(exc, "errno", None)
    if code is None and rbd is not None:
        code = _ERRNO_OF.get(type(exc))
    if code is not None and abs(code) == errno.ETIMEDOUT:
        return DriverTimeout(text)
    if code is not None and abs(code) in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientResources(text)
    if code is not None and abs(code) == errno.EBUSY:
        return InvalidState("in use", "not in use by a running VM", message=text)
    return BackendFailure(text)


_ERRNO_OF: dict[type, int] = (
    {}
    if rbd is None
    else {
        rbd.Timeout: errno.ETIMEDOUT,
        rados.TimedOut: errno.ETIMEDOUT,
        rbd.NoSpace: errno.ENOSPC,
        rbd.DiskQuotaExceeded: errno.EDQUOT,
        rbd.ImageBusy: errno.EBUSY,
    }
)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn librados/librbd errors raised inside the block into typed driver errors."""
    try:
        yield
    except DriverError:
        raise
    except Exception as exc:
        if available() and isinstance(exc, rbd.Error | rados.Error | OSError):
            raise translate(what, exc) from exc
        raise


def mon_json(cluster: Any, command: dict[str, Any], timeout: float) -> Any:
    """A monitor command's JSON answer (``ceph <command> --format json``)."""
    ret, out, err = cluster.mon_command(
        json.dumps({**command, "format": "json"}), b"", timeout=int(timeout)
    )
    if ret != 0:
        raise BackendFailure(f"ceph {command['prefix']}: {err or ret}")
    return json.loads(out or b"null")


_HEALTH: dict[str, PoolHealth] = {
    "HEALTH_OK": "ok",
    "HEALTH_WARN": "degraded",
    "HEALTH_ERR": "error",
}


def health(cluster: Any, timeout: float) -> tuple[PoolHealth, str]:
    """The cluster's health as a pool health, with Ceph's own words for what is wrong.

    ``HEALTH_WARN`` (an OSD down, PGs degraded, recovery running) is *degraded*: data is
    served with less redundancy. ``HEALTH_ERR`` or no answer from the monitors is *error*.
    """
    try:
        report = mon_json(cluster, {"prefix": "health", "detail": "detail"}, timeout)
    except Exception as exc:
        return "error", f"no health report from the Ceph monitors: {exc}"
    status = _HEALTH.get(str(report.get("status")), "error")
    checks = report.get("checks") or {}
    detail = "; ".join(
        f"{name}: {check.get('summary', {}).get('message', '')}"
        for name, check in sorted(checks.items())
    )
    return status, detail


def pool_capacity(cluster: Any, pool: str, timeout: float) -> int:
    """Bytes the pool can hold (what it stores plus what is still free, per replica)."""
    df = mon_json(cluster, {"prefix": "df"}, timeout)
    for entry in df.get("pools", ()):
        if entry.get("name") == pool:
            stats = entry.get("stats", {})
            return int(stats.get("stored", 0)) + int(stats.get("max_avail", 0))
    raise BackendFailure(f"ceph df does not list pool {pool!r}")
