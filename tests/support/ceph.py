"""A real single-machine Ceph cluster for tests, bootstrapped by hand in a temporary directory.

Debian's Pacific packages, no systemd, no ``ceph-volume`` (it needs device-mapper, absent
here): ``monmaptool`` + ``ceph-mon --mkfs``, a mgr, and three bluestore OSDs on sparse files
(``ceph osd new`` + ``ceph-osd --mkfs``), all on 127.0.0.1 on a free port, cephx on.
``osd_crush_chooseleaf_type = 0`` lets the three replicas of every object live on three
OSDs of one host. Every daemon runs in the foreground (``-f``) in its own session with
stdin from /dev/null, so we hold its PID and a pipe never keeps a caller waiting; it is
stopped by that PID (OSDs, then mgr, then mon) and the directory removed, even when the
bootstrap failed halfway.

Tuned for tests on a small shared machine: little memory per OSD, monitor proposals every
50 ms instead of 1 s (each RBD snapshot allocates its id through a new OSD map: ~1 s per
snapshot otherwise), heartbeats of 1 s so a
killed OSD is marked down in ~4 s (not 20), recovery without sleeps, few PGs.

``ceph_cluster`` (session scope) starts one cluster the first time a test asks for it;
without the packages it skips (a failure under ``ALTO_REQUIRE_REAL=1``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from altostack.drivers.storage.ceph_cluster import CephConfig
from tests.support.real import free_port, need_real

POOL = "rbd"
CLIENT = "alto"
OSDS = 3
BOOT_TIMEOUT = 90.0
"""Seconds the whole bootstrap may take (measured: ~15 s)."""
TOOLS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "monmaptool", "ceph-authtool", "rbd")


def need_ceph() -> None:
    """Skip (or fail under ALTO_REQUIRE_REAL=1) unless the Ceph daemons and bindings exist."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError:
        missing.append("python3-rados/python3-rbd (venv needs --system-site-packages)")
    if missing:
        need_real(f"Ceph is not installed: {', '.join(missing)} (scripts/install-system-deps)")


def _conf(d: Path, fsid: str, port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{port}]
mon_initial_members = a
public_addr = 127.0.0.1
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {d}/run
admin_socket = {d}/run/$cluster-$name.asok
log_file = {d}/log/$cluster-$name.log
keyring = {d}/keyring.$name
mon_data = {d}/mon/$cluster-$id
mgr_data = {d}/mgr/$cluster-$id
osd_data = {d}/osd/$cluster-$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = {8 * 1024**3}
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_memory_target = 536870912
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_delete = true
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_warn_on_pool_no_redundancy = false
mon_osd_min_down_reporters = 1
osd_heartbeat_interval = 1
osd_heartbeat_grace = 4
mon_osd_adjust_heartbeat_grace = false
osd_recovery_sleep = 0
osd_recovery_sleep_hdd = 0
osd_recovery_sleep_ssd = 0
osd_op_num_threads_per_shard = 1
osd_op_num_shards = 2
ms_async_op_threads = 2
debug_ms = 0
mon_cluster_log_file = {d}/log/cluster.log

[mon]
keyring = $mon_data/keyring

[mgr]
keyring = $mgr_data/keyring

[osd]
keyring = $osd_data/keyring
"""


@dataclass
class CephCluster:
    """A running test cluster: its files, daemons (by PID) and the client the driver uses."""

    dir: Path
    conf: Path
    fsid: str = ""
    pool: str = POOL
    client_id: str = CLIENT
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    boot_seconds: float = 0.0

    @property
    def client_keyring(self) -> Path:
        return self.dir / f"keyring.client.{self.client_id}"

    def driver_config(self, namespace: str = "", **changes: Any) -> CephConfig:
        """How the ``ceph`` storage driver reaches this cluster (as the ``alto`` client)."""
        config = CephConfig(
            pool=self.pool,
            conf_path=self.conf,
            client_id=self.client_id,
            keyring=self.client_keyring,
            namespace=namespace,
            op_timeout=20.0,
        )
        return replace(config, **changes)

    # -- running tools and daemons ---------------------------------------------------------

    def run(self, *argv: str, timeout: float = 30.0) -> str:
        """A Ceph tool with this cluster's conf; its stdout, or RuntimeError with stderr."""
        tool, *rest = argv
        cmd = [tool, "-c", str(self.conf), *rest]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(cmd)}: no answer in {timeout} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def ceph(self, *argv: str, timeout: float = 30.0) -> str:
        return self.run("ceph", "--connect-timeout", str(int(timeout)), *argv, timeout=timeout)

    def ceph_json(self, *argv: str, timeout: float = 30.0) -> Any:
        return json.loads(self.ceph(*argv, "--format", "json", timeout=timeout) or "null")

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.dir / "log" / f"{name}.out").open("ab")
        with log:
            self.procs[name] = subprocess.Popen(
                [argv[0], "-f", "-c", str(self.conf), *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: our signals and terminal never reach it
            )

    def _stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def start_osd(self, osd_id: int) -> None:
        """Start (or restart) OSD ``osd_id``; it rejoins and recovery begins."""
        self._start(f"osd.{osd_id}", ["ceph-osd", "-i", str(osd_id)])

    def kill_osd(self, osd_id: int) -> None:
        """SIGKILL OSD ``osd_id``: a crash, not a clean stop (its peers must notice)."""
        self._stop(f"osd.{osd_id}", signal.SIGKILL)

    # -- state -----------------------------------------------------------------------------

    def health(self) -> str:
        """HEALTH_OK, HEALTH_WARN or HEALTH_ERR."""
        return str(self.ceph_json("health", timeout=15)["status"])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until HEALTH_OK with every PG active+clean, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, ValueError, KeyError):
                status = self.ceph_json("status", timeout=10)
                health = status["health"]
                pgs = status["pgmap"]
                clean = sum(
                    s["count"] for s in pgs.get("pgs_by_state", ())
                    if s["state_name"] == "active+clean"
                )  # fmt: skip
                last = f"{health['status']} {json.dumps(health.get('checks', {}))[:400]} "
                last += f"{clean}/{pgs['num_pgs']} PGs active+clean"
                if health["status"] == "HEALTH_OK" and clean == pgs["num_pgs"]:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"Ceph not clean after {timeout:.0f} s: {last}")

    def wait_osds_up(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, ValueError):
                stat = self.ceph_json("osd", "stat", timeout=10)
                if stat.get("num_up_osds") == count and stat.get("num_in_osds") == count:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{count} OSDs not up after {timeout} s")

    def daemon_pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return None if proc is None or proc.poll() is not None else proc.pid

    # -- life cycle ------------------------------------------------------------------------

    def bootstrap(self) -> None:
        started = time.monotonic()
        d = self.dir
        for sub in ("run", "log", "mon/ceph-a", "mgr/ceph-x"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.fsid = str(uuid.uuid4())
        port = free_port()
        self.conf.write_text(_conf(d, self.fsid, port))
        mon_keyring, admin_keyring = d / "mon.keyring", d / "keyring.client.admin"
        self.run("ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n",
                 "mon.", "--cap", "mon", "allow *")  # fmt: skip
        self.run("ceph-authtool", "--create-keyring", str(admin_keyring), "--gen-key", "-n",
                 "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                 "--cap", "mgr", "allow *")  # fmt: skip
        self.run("ceph-authtool", str(mon_keyring), "--import-keyring", str(admin_keyring))
        monmap = d / "monmap"
        subprocess.run(
            ["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
             f"[v2:127.0.0.1:{port}]", str(monmap)],
            check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap),
                 "--keyring", str(mon_keyring))  # fmt: skip
        self._start("mon.a", ["ceph-mon", "-i", "a"])
        self.ceph("config", "set", "mgr", "mgr/devicehealth/enable_monitoring", "false", "--force")
        self.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd",
                  "allow *", "mds", "allow *", "-o", str(d / "mgr/ceph-x/keyring"))  # fmt: skip
        self._start("mgr.x", ["ceph-mgr", "-i", "x"])
        mkfs: list[subprocess.Popen[bytes]] = []
        for _ in range(OSDS):
            osd_uuid = str(uuid.uuid4())
            osd_id = int(self.ceph("osd", "new", osd_uuid).strip())
            osd_dir = d / "osd" / f"ceph-{osd_id}"
            osd_dir.mkdir(parents=True)
            self.run("ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--gen-key",
                     "-n", f"osd.{osd_id}")  # fmt: skip
            self.ceph("auth", "add", f"osd.{osd_id}", "osd", "allow *", "mon",
                      "allow profile osd", "mgr", "allow profile osd", "-i",
                      str(osd_dir / "keyring"))  # fmt: skip
            mkfs.append(
                subprocess.Popen(
                    [
                        "ceph-osd",
                        "-c",
                        str(self.conf),
                        "-i",
                        str(osd_id),
                        "--mkfs",
                        "--osd-uuid",
                        osd_uuid,
                        "--keyring",
                        str(osd_dir / "keyring"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        for osd_id, proc in enumerate(mkfs):
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"ceph-osd --mkfs osd.{osd_id}: {err.decode().strip()}")
        for osd_id in range(OSDS):
            self.start_osd(osd_id)
        self.ceph("osd", "set-require-min-compat-client", "mimic")  # RBD clone v2
        self.ceph("osd", "pool", "create", self.pool, "16", "16")
        self.run("rbd", "pool", "init", self.pool)
        self.ceph("auth", "get-or-create", f"client.{self.client_id}", "mon", "profile rbd",
                  "osd", f"profile rbd pool={self.pool}", "mgr", f"profile rbd pool={self.pool}",
                  "-o", str(self.client_keyring))  # fmt: skip
        self.wait_osds_up(OSDS, timeout=BOOT_TIMEOUT)
        self.wait_healthy(timeout=BOOT_TIMEOUT - (time.monotonic() - started))
        self.boot_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Every daemon by PID (OSDs, mgr, mon), then the directory; never raises."""
        for name in sorted(n for n in self.procs if n.startswith("osd.")):
            with contextlib.suppress(Exception):
                self._stop(name)
        for name in ("mgr.x", "mon.a"):
            with contextlib.suppress(Exception):
                self._stop(name)
        for name in list(self.procs):  # anything left: no grace
            with contextlib.suppress(Exception):
                self._stop(name, signal.SIGKILL, grace=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def ceph_cluster_running() -> Iterator[CephCluster]:
    """A bootstrapped cluster for the duration of the block, torn down whatever happens."""
    need_ceph()
    d = Path(tempfile.mkdtemp(prefix="alto-ceph-"))
    cluster = CephCluster(d, d / "ceph.conf")
    try:
        try:
            cluster.bootstrap()
        except (RuntimeError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                for p in sorted((d / "log").glob("*.out"))
            )
            pytest.fail(f"Ceph bootstrap failed: {exc}\n{logs}", pytrace=False)
        print(f"\nCeph cluster ready in {cluster.boot_seconds:.1f}s ({d})")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """One real Ceph cluster per test session, started by the first test that asks.

    ``ALTO_TEST_CEPH_DIR`` names the directory of a cluster already running (started with
    ``python -m tests.support.ceph``) to reuse while developing: no bootstrap, no teardown,
    and no daemon control (tests that kill OSDs skip).
    """
    reuse = os.environ.get("ALTO_TEST_CEPH_DIR")
    if reuse:
        need_ceph()
        yield CephCluster(Path(reuse), Path(reuse) / "ceph.conf")
        return
    with ceph_cluster_running() as cluster:
        yield cluster


if __name__ == "__main__":  # a cluster for development: runs until SIGINT/SIGTERM

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # a handler, not a mask: daemons inherit masks
    with contextlib.suppress(KeyboardInterrupt), ceph_cluster_running() as running:
        print(f"ALTO_TEST_CEPH_DIR={running.dir}", flush=True)
        while True:
            signal.pause()
