"""The ``ceph`` backend's parts that need no cluster: QEMU descriptions, settings, errors.

Everything touching a cluster is in tests/contract (the storage contract) and
tests/integration/test_ceph.py, against a real one.
"""

from __future__ import annotations

import errno
from dataclasses import asdict
from pathlib import Path

import pytest

from altostack.drivers.compute.base import DiskSpec
from altostack.drivers.compute.qemu_cmdline import disk_blockdev_args
from altostack.drivers.errors import (
    BackendFailure,
    DriverTimeout,
    InsufficientResources,
    InvalidSpec,
    InvalidState,
)
from altostack.drivers.storage.ceph import CephConfig, CephStorageDriver
from altostack.drivers.storage.ceph_cluster import translate
from altostack.settings import Settings


def _driver(**changes: object) -> CephStorageDriver:
    config = CephConfig(
        pool="vms",
        conf_path=Path("/etc/ceph/a:b.conf"),
        client_id="alto",
        **changes,  # type: ignore[arg-type]
    )
    return CephStorageDriver(config)  # connects on first use only


def test_qemu_blockdev_names_pool_image_conf_and_user_but_no_key() -> None:
    node = _driver(keyring=Path("/k")).qemu_blockdev("disk-1", node_name="d1")
    assert node == {
        "driver": "rbd",
        "pool": "vms",
        "image": "vol.disk-1",
        "conf": "/etc/ceph/a:b.conf",
        "user": "alto",
        "node-name": "d1",
    }
    assert _driver(namespace="t1").qemu_blockdev("disk-1")["namespace"] == "t1"


def test_qemu_filename_escapes_colons_and_includes_the_namespace() -> None:
    assert (
        _driver(namespace="t1", keyring=Path("/k")).qemu_filename("disk-1")
        == r"rbd:vms/t1/vol.disk-1:id=alto:conf=/etc/ceph/a\:b.conf:keyring=/k"
    )
    with pytest.raises(InvalidSpec):
        _driver().qemu_filename("../x")


def test_the_settings_section_is_a_driver_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTO_CEPH", '{"pool": "vms", "client_id": "alto", "op_timeout": 5}')
    section = Settings().ceph
    assert CephConfig(**section.model_dump()) == CephConfig(
        pool="vms", client_id="alto", op_timeout=5.0
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.ETIMEDOUT, DriverTimeout),
        (errno.ENOSPC, InsufficientResources),
        (errno.EDQUOT, InsufficientResources),
        (errno.EBUSY, InvalidState),
        (errno.EIO, BackendFailure),
    ],
)
def test_errnos_become_typed_errors(code: int, error: type[Exception]) -> None:
    translated = translate("rbd write", OSError(code, "from librados"))
    assert isinstance(translated, error)
    assert "rbd write" in translated.message and "from librados" in translated.message


def test_a_disk_with_a_protocol_node_is_opened_by_qemu_not_as_a_host_file() -> None:
    protocol = tuple(_driver().qemu_blockdev("disk-1").items())
    disk = DiskSpec("disk-1", "", "raw", protocol=protocol)
    file_node, format_node = disk_blockdev_args(disk)
    assert file_node == {
        "driver": "rbd",
        "pool": "vms",
        "image": "vol.disk-1",
        "conf": "/etc/ceph/a:b.conf",
        "user": "alto",
        "node-name": "disk-disk-1-file",
        "read-only": False,
    }
    assert format_node["driver"] == "raw" and format_node["file"] == "disk-disk-1-file"
    # as the qemu driver's JSON record gives it back: lists, still equal
    assert DiskSpec(**{**asdict(disk), "protocol": [list(p) for p in protocol]}) == disk
    assert disk_blockdev_args(DiskSpec("d", "/v/d.qcow2"))[0]["driver"] == "file"
