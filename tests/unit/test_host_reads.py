"""The pure parts of host reads: console tails, /proc and QMP counters, the image cache's
fetch from an image source (checksum verified, converted once)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from altostack.drivers.compute import console_log
from altostack.drivers.compute.console_log import tail_lines
from altostack.drivers.compute.local_images import FetchedImage, LocalImageCache
from altostack.drivers.compute.qemu_stats import disk_stats, link_stats, process_counters
from altostack.drivers.errors import BackendFailure, ImageNotFound


def test_tail_reads_only_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_log, "BLOCK", 7)  # many small blocks: the seams are tested
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(100)) + b"login: ")
    assert tail_lines(log, 3) == "line 98\nline 99\nlogin: "
    assert tail_lines(log, 1) == "login: "
    assert tail_lines(log, 0) == ""
    assert tail_lines(log, 1000).startswith("line 0\n")
    assert tail_lines(log, None) == log.read_text()
    log.write_bytes(b"a\nb\n\xff\xfe\n")
    assert tail_lines(log, 2) == "b\n\ufffd\ufffd\n"
    assert tail_lines(tmp_path / "missing.log", 5) == ""


def test_process_counters_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "42"
    proc.mkdir()
    fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
    (proc / "stat").write_text(f"42 (qemu-system-x86) (odd) name) {' '.join(fields)}\n")
    (proc / "status").write_text("Name:\tqemu\nVmRSS:\t  204800 kB\nThreads:\t4\n")
    cpu_ns, rss = process_counters(42, tmp_path)
    assert cpu_ns == 300 * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert rss == 204800 * 1024
    with pytest.raises(BackendFailure):
        process_counters(43, tmp_path)


def test_disk_stats_name_the_guest_devices() -> None:
    qdev = "/machine/peripheral/{}/virtio-backend"
    stats = disk_stats(
        [
            {"device": "", "node-name": "seed", "qdev": qdev.format("seed-disk"),
             "stats": {"rd_bytes": 10, "wr_bytes": 0, "rd_operations": 2, "wr_operations": 0}},
            {"device": "", "node-name": "root", "qdev": qdev.format("root-disk"),
             "stats": {"rd_bytes": 5, "wr_bytes": 7, "rd_operations": 1, "wr_operations": 3}},
            {"device": "", "node-name": "hot1", "stats": {}},
        ]
    )  # fmt: skip
    assert [d.name for d in stats] == ["hot1", "root-disk", "seed-disk"]
    root = stats[1]
    assert (root.read_bytes, root.write_bytes, root.read_ops, root.write_ops) == (5, 7, 1, 3)


def test_link_stats_are_the_guests_view_of_a_tap(tmp_path: Path) -> None:
    base = tmp_path / "tap0" / "statistics"
    base.mkdir(parents=True)
    for name, value in (("rx_bytes", 100), ("tx_bytes", 900), ("rx_packets", 1), ("tx_packets", 9)):
        (base / name).write_text(f"{value}\n")
    nic = link_stats("tap0", tmp_path)
    assert nic is not None and (nic.rx_bytes, nic.tx_bytes) == (900, 100)
    assert (nic.rx_packets, nic.tx_packets) == (9, 1)
    assert link_stats("tap1", tmp_path) is None


class FakeSource:
    def __init__(self, data: bytes, sha256: str | None = None, fmt: str = "qcow2") -> None:
        self.data, self.fmt, self.calls = data, fmt, 0
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()

    async def fetch(self, image_id: str, target: Path) -> FetchedImage:
        self.calls += 1
        if image_id == "img-gone":
            raise ImageNotFound(image_id)
        await asyncio.sleep(0.01)
        await asyncio.to_thread(target.write_bytes, self.data)
        return FetchedImage(self.sha256, self.fmt)


async def test_cache_fetches_once_and_verifies(tmp_path: Path) -> None:
    source = FakeSource(b"QFI\xfb" + b"\0" * 1020)
    cache = LocalImageCache(tmp_path / "images", source)
    paths = await asyncio.gather(*(cache.ensure("img-1") for _ in range(3)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == source.data
    assert source.calls == 1
    assert await cache.ensure("img-1") == paths[0] and source.calls == 1
    with pytest.raises(ImageNotFound):
        await cache.ensure("img-gone")

    bad = LocalImageCache(tmp_path / "bad", FakeSource(b"data", sha256="0" * 64))
    with pytest.raises(BackendFailure, match="SHA-256"):
        await bad.ensure("img-2")
    assert list((tmp_path / "bad").iterdir()) == []  # nothing kept, no leftovers

    with pytest.raises(ImageNotFound):
        await LocalImageCache(tmp_path / "none").ensure("img-3")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
async def test_cache_converts_raw_images_to_qcow2(tmp_path: Path) -> None:
    cache = LocalImageCache(tmp_path / "images", FakeSource(b"\0" * 65536, fmt="raw"))
    path = await cache.ensure("img-raw")
    assert path.read_bytes()[:4] == b"QFI\xfb"
    assert await cache.virtual_size("img-raw") == 65536
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["img-raw.qcow2"]
