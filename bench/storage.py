"""Storage benchmark: I/O through QEMU's block layer vs. the same I/O without it, same run.

Two pairs, each measured in one run on this machine, one test after the other:

- **local**: a 1 GiB volume of the ``local`` backend (a qcow2 file made by the driver) vs.
  a raw file of the same size in the same directory, both through ``qemu-img bench``
  with ``-t none`` (O_DIRECT, no page cache): the cost of the qcow2 layer.
- **ceph**: a 1 GiB volume of the ``ceph`` backend opened by QEMU's rbd driver
  (``qemu-img bench`` on the driver's ``rbd:`` file name) vs. ``rbd bench`` (librbd
  directly) on the same image: the cost of QEMU's path to librbd. The cluster is the test
  cluster (1 mon, 1 mgr, 3 OSDs on sparse files of one disk, 3 replicas), started here
  unless ``--ceph-dir`` names a running one.

Tests, in this order (the first fills the volume, so reads read real data):
sequential write and read in 1 MiB blocks over the whole volume (MB/s, 4 in flight), then
4 KiB "random" write and read (IOPS, 16 in flight). ``qemu-img bench`` has no random
pattern: it steps through the image with a stride of 257 x 4 KiB, wrapping around, so
consecutive requests are 1 MiB apart (no two in one page, block or RADOS object in a
row); ``rbd bench`` uses its own random pattern.

    .venv/bin/python bench/storage.py [--count 4000] [--json] [--ceph-dir DIR] [--skip-ceph]

Prints a table with the ratios (via QEMU / direct) and the machine's load (``uptime``)
before and after. Everything it creates is removed, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from altostack.drivers.storage.base import GIB, VolumeSpec
from altostack.drivers.storage.ceph import CephStorageDriver
from altostack.drivers.storage.local import LocalStorageDriver

MIB = 1024**2
STRIDE = 257 * 4096
COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")
RBD_BENCH = re.compile(r"elapsed:\s*([0-9.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([0-9.]+)")


@dataclass
class Result:
    backend: str
    test: str
    unit: str
    via_qemu: float
    direct: float

    @property
    def ratio(self) -> float:
        return self.via_qemu / self.direct if self.direct else 0.0


def _run(argv: list[str], timeout: float = 600) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}…: {done.stderr.strip() or done.stdout}")
    return done.stdout


def qemu_bench(target: str, fmt: str, *, write: bool, size: int, count: int, depth: int,
               step: int | None = None) -> float:  # fmt: skip
    """Seconds ``qemu-img bench`` took for ``count`` requests of ``size`` bytes."""
    argv = ["qemu-img", "bench", "-f", fmt, "-t", "none", "-c", str(count), "-d", str(depth),
            "-s", str(size)]  # fmt: skip
    if step is not None:
        argv += ["-S", str(step)]
    if write:
        argv += ["-w", "--pattern=165"]
    found = COMPLETED.search(_run([*argv, target]))
    if not found:
        raise RuntimeError(f"qemu-img bench printed no time for {target}")
    return float(found.group(1))


def pair_tests(
    backend: str, via: Any, direct: Any, *, count: int, volume_bytes: int
) -> list[Result]:
    """The four tests; ``via``/``direct`` take (write, size, count, depth, step) → rate."""
    seq_count = volume_bytes // MIB
    results = []
    for test, write, size, n, depth, step, unit in (
        ("seq write 1M", True, MIB, seq_count, 4, None, "MB/s"),
        ("seq read 1M", False, MIB, seq_count, 4, None, "MB/s"),
        ("4K random write", True, 4096, count, 16, STRIDE, "IOPS"),
        ("4K random read", False, 4096, count, 16, STRIDE, "IOPS"),
    ):
        a = via(write, size, n, depth, step)
        b = direct(write, size, n, depth, step)
        results.append(Result(backend, test, unit, round(a, 1), round(b, 1)))
        print(f"  {backend:5} {test:16} via QEMU {a:9.1f}  direct {b:9.1f} {unit}", flush=True)
    return results


def _rate(seconds: float, size: int, count: int, unit_mb: bool) -> float:
    return size * count / seconds / 1e6 if unit_mb else count / seconds


def bench_local(work: Path, count: int) -> list[Result]:
    driver = LocalStorageDriver(work / "pool")
    asyncio.run(driver.ensure_volume(VolumeSpec("disk-bench", 1)))
    volume = str(driver.paths.volume("disk-bench"))
    raw = work / "raw.img"
    with raw.open("wb") as f:
        f.truncate(GIB)

    def via(write: bool, size: int, n: int, depth: int, step: int | None) -> float:
        secs = qemu_bench(volume, "qcow2", write=write, size=size, count=n, depth=depth, step=step)
        return _rate(secs, size, n, size == MIB)

    def direct(write: bool, size: int, n: int, depth: int, step: int | None) -> float:
        secs = qemu_bench(str(raw), "raw", write=write, size=size, count=n, depth=depth, step=step)
        return _rate(secs, size, n, size == MIB)

    return pair_tests("local", via, direct, count=count, volume_bytes=GIB)


def bench_ceph(conf: Any, count: int) -> list[Result]:
    driver = CephStorageDriver(conf)

    async def make() -> None:
        await driver.ensure_volume(VolumeSpec("disk-bench", 1))

    asyncio.run(make())
    target = driver.qemu_filename("disk-bench")
    spec = (
        f"{conf.pool}/{conf.namespace}/vol.disk-bench"
        if conf.namespace
        else (f"{conf.pool}/vol.disk-bench")
    )
    rbd_base = ["rbd", "-c", str(conf.conf_path), "--id", conf.client_id]
    if conf.keyring is not None:
        rbd_base += ["--keyring", str(conf.keyring)]

    def via(write: bool, size: int, n: int, depth: int, step: int | None) -> float:
        secs = qemu_bench(target, "raw", write=write, size=size, count=n, depth=depth, step=step)
        return _rate(secs, size, n, size == MIB)

    def direct(write: bool, size: int, n: int, depth: int, step: int | None) -> float:
        out = _run([*rbd_base, "bench", "--io-type", "write" if write else "read",
                    "--io-size", str(size), "--io-threads", str(depth),
                    "--io-total", str(size * n),
                    "--io-pattern", "seq" if step is None else "rand", spec])  # fmt: skip
        found = RBD_BENCH.findall(out)
        if not found:
            raise RuntimeError(f"rbd bench printed no summary: {out[-300:]}")
        _, _, ops_per_sec = found[-1]
        rate = float(ops_per_sec)
        return rate * size / 1e6 if size == MIB else rate

    try:
        return pair_tests("ceph", via, direct, count=count, volume_bytes=GIB)
    finally:
        asyncio.run(_delete_and_close(driver))


async def _delete_and_close(driver: CephStorageDriver) -> None:
    with contextlib.suppress(Exception):
        await driver.delete_volume("disk-bench", force=True)
    await driver.close()


@contextlib.contextmanager
def ceph_config(ceph_dir: str | None) -> Iterator[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.ceph import CephCluster, ceph_cluster_running

    if ceph_dir:
        yield CephCluster(Path(ceph_dir), Path(ceph_dir) / "ceph.conf").driver_config("bench")
        return
    with ceph_cluster_running() as cluster:
        yield cluster.driver_config("bench")


def uptime() -> str:
    return _run(["uptime"]).strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=4000, help="4K requests per test")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ceph-dir", help="a running test cluster (python -m tests.support.ceph)")
    parser.add_argument("--skip-ceph", action="store_true")
    args = parser.parse_args()
    if shutil.which("qemu-img") is None:
        print("qemu-img is not installed", file=sys.stderr)
        return 2
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    started = time.monotonic()
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="alto-bench-storage-", dir="/var/tmp"))
    try:
        results += bench_local(work, args.count)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.skip_ceph:
        with ceph_config(args.ceph_dir) as conf:
            results += bench_ceph(conf, args.count)
    load_after = uptime()
    if args.json:
        print(json.dumps({
            "results": [{**asdict(r), "ratio": round(r.ratio, 3)} for r in results],
            "load_before": load_before, "load_after": load_after,
            "seconds": round(time.monotonic() - started, 1),
        }, indent=2))  # fmt: skip
    print("\n| backend | test | unit | via QEMU | direct | ratio |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.backend} | {r.test} | {r.unit} | {r.via_qemu:.1f} | {r.direct:.1f} | "
              f"{r.ratio:.2f} |")  # fmt: skip
    print(f"\nload after: {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
