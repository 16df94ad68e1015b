"""Boot benchmark: ``POST /v1/vms`` → guest readiness, against a bare QEMU of the same VM.

One ``alto up --driver qemu`` runs as a subprocess on a fresh data directory (this machine
is its one host; the test guest is its default image). Each round, one at a time so the
two never compete for the CPU:

- **altostack**: ``POST /v1/vms`` (c1.small, the default image), then ``GET
  /v1/vms/{id}/console-output`` every 0.1 s until the guest prints
  ``ALTO-GUEST-READY … hostname=<name>``. The time includes everything the platform does:
  the request (quota, placement, claim), the operation worker, the agent, the root
  overlay, the seed ISO, launching QEMU and the QMP set-up, and the guest's own boot.
  The VM is then deleted and purged through the API.
- **bare**: the very command line the driver generated for that VM
  (``QemuComputeDriver.command``), with its paths moved to a directory of its own (a new
  overlay on the same base image, a copy of the same seed ISO) and without ``-S`` (nobody
  resumes it over QMP): the time from ``exec`` of ``qemu-system-x86_64`` to the same
  readiness line in its serial log. The overlay is made before the clock starts.

It prints both times per round, their medians and the ratio altostack / bare (the target:
at most 1.3). Everything it starts is stopped by PID, also on failure. Beside the wall
times it records the CPU-seconds each side's QEMU had used when the readiness line was
seen: on a machine shared with other work the wall times stretch with the load, the
guest's CPU cost much less (it is what the guest's boot costs, whoever else runs).

    .venv/bin/python bench/boot.py [--rounds 3] [--json] [--keep DIR] [--image QCOW2]

Exit status: 0 when the target is met, 1 when it is not, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from altostack.drivers.compute.local_images import LocalImageCache
from altostack.drivers.compute.qemu import QemuComputeDriver
from altostack.drivers.compute.qemu_host import detect_accel
from altostack.drivers.compute.qemu_process import kill_now, pids_with, read_pidfile

ADMIN_PASSWORD = "Bench-Admin-Pass-1"
TARGET_RATIO = 1.3
START_TIMEOUT = 300.0  # the first start may build the test image
BOOT_TIMEOUT = float(os.environ.get("ALTO_GUEST_TIMEOUT", "120"))
POLL = 0.1
READY = re.compile(r"^ALTO-GUEST-READY ip=\S+ hostname=(\S+)", re.MULTILINE)


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and missed the target)."""


@dataclass
class Round:
    altostack_s: float
    bare_s: float
    api_accept_ms: float
    """How long ``POST /v1/vms`` took to answer 202."""
    altostack_cpu_s: float | None = None
    """CPU-seconds (user + system) of the VM's QEMU when its readiness was seen."""
    bare_cpu_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.altostack_s / self.bare_s


@dataclass
class Report:
    rounds: list[Round] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(getattr(r, name) for r in self.rounds)

    def median_cpu(self, name: str) -> float | None:
        values = [v for r in self.rounds if (v := getattr(r, name)) is not None]
        return round(statistics.median(values), 3) if values else None

    @property
    def ratio(self) -> float:
        return self.median("altostack_s") / self.median("bare_s")

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "rounds": [{**asdict(r), "ratio": round(r.ratio, 3)} for r in self.rounds],
            "median_altostack_s": round(self.median("altostack_s"), 3),
            "median_bare_s": round(self.median("bare_s"), 3),
            "ratio": round(self.ratio, 3),
            "median_altostack_cpu_s": self.median_cpu("altostack_cpu_s"),
            "median_bare_cpu_s": self.median_cpu("bare_cpu_s"),
            "target": TARGET_RATIO,
            "met": self.ratio <= TARGET_RATIO,
        }


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alto_executable() -> str:
    candidate = Path(sys.executable).parent / "alto"
    found = str(candidate) if candidate.exists() else shutil.which("alto")
    if not found:
        raise BenchError("the `alto` command is missing; run `make deps` and use .venv/bin/python")
    return found


@contextmanager
def alto_up(data_dir: Path, log_path: Path, image: Path | None = None) -> Iterator[str]:
    """``alto up --driver qemu`` on ``data_dir`` (default image: ``image`` if given, else
    the test image); its URL. Stopped by PID at the end, and every QEMU under ``data_dir``
    killed by PID."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTO_")}
    env.update(
        ALTO_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ALTO_LOG_LEVEL="warning",
        ALTO_HEARTBEAT_INTERVAL_SECONDS="5",
        ALTO_NETWORK_DRIVER="sim",  # the guest has no NIC: no lab network to make or leave
    )
    if image is not None:
        env["ALTO_DEFAULT_IMAGE"] = str(image)
    argv = [alto_executable(), "up", "--driver", "qemu", "--port", str(port)]
    argv += ["--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise BenchError(f"alto up exited with {proc.returncode}:\n{tail(log_path)}")
            with suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"alto up not ready after {START_TIMEOUT:.0f}s:\n{tail(log_path)}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        kill_under(data_dir)


def kill_under(root: Path) -> None:
    marker = f"{root}/"
    for pid in pids_with(marker):
        kill_now(pid, marker)


def qemu_cpu_seconds(pidfile: Path) -> float | None:
    """User + system CPU time of the QEMU whose pidfile this is (None if it is gone)."""
    pid = read_pidfile(pidfile)
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def tail(path: Path, lines: int = 30) -> str:
    with suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --------------------------------------------------------------------------- the API side


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        r = self.http.post(
            "/v1/auth/tokens",
            json={"username": "admin", "password": ADMIN_PASSWORD, "tenant": "system"},
        )
        if r.status_code != 201:
            raise BenchError(f"login answered {r.status_code}: {r.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {r.json()['token']}"
        images = self.http.get("/v1/images", params={"name": "alto-test"}).json()["items"]
        if not images or images[0]["state"] != "available":
            raise BenchError(f"no available default image alto-test (see the server log): {images}")
        self.image_id = str(images[0]["id"])

    def wait(self, op: dict[str, Any] | None) -> None:
        if op is None:
            return
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            body = self.http.get(f"/v1/operations/{op['id']}", params={"wait": 10}).json()
            if body["state"] == "succeeded":
                return
            if body["state"] == "failed":
                raise BenchError(f"operation {body['kind']} failed: {body['error']}")
        raise BenchError(f"operation {op['id']} did not finish")

    def boot(self, name: str) -> tuple[str, float, float]:
        """Create a VM and wait for its readiness line: (VM id, seconds, 202 in ms)."""
        started = time.monotonic()
        r = self.http.post(
            "/v1/vms", json={"name": name, "instance_type": "c1.small", "image_id": self.image_id}
        )
        accepted = time.monotonic()
        if r.status_code != 202:
            raise BenchError(f"POST /v1/vms answered {r.status_code}: {r.text[:300]}")
        vm_id = str(r.json()["vm"]["id"])
        while True:
            out = self.http.get(f"/v1/vms/{vm_id}/console-output", params={"lines": 20})
            if out.status_code == 200 and _ready(out.json()["output"], name):
                return vm_id, time.monotonic() - started, (accepted - started) * 1000
            if time.monotonic() - started > BOOT_TIMEOUT:
                raise BenchError(f"{vm_id} not ready after {BOOT_TIMEOUT:.0f}s: {out.text[-500:]}")
            time.sleep(POLL)

    def destroy(self, vm_id: str) -> None:
        r = self.http.delete(f"/v1/vms/{vm_id}")
        self.wait(r.json().get("operation"))
        r = self.http.delete(f"/v1/recycle-bin/{vm_id}")
        self.wait(r.json())


def _ready(output: str, hostname: str) -> bool:
    return any(m.group(1) == hostname for m in READY.finditer(output))


# --------------------------------------------------------------------------- the bare side


@dataclass
class BareVm:
    """The driver's command line for one VM, movable to a directory of its own."""

    argv: list[str]
    vm_dir: Path
    base_image: Path
    seed_iso: Path
    hostname: str


def capture(data_dir: Path, vm_id: str, hostname: str) -> BareVm:
    """What the driver runs for ``vm_id`` (read from its state directory while it exists)."""
    state_dir = data_dir / "qemu"
    driver = QemuComputeDriver(state_dir, LocalImageCache(state_dir / "images"))
    command = driver.command(vm_id)
    record = json.loads((state_dir / "vms" / vm_id / "vm.json").read_text())
    vm_dir = state_dir / "vms" / vm_id
    seed = vm_dir / f"seed-{record['seed_serial']}.iso"
    keep = tempfile.mkdtemp(prefix="seed-", dir=data_dir)
    shutil.copy(seed, Path(keep) / seed.name)
    return BareVm(
        argv=[a for a in command.argv if a != "-S"],
        vm_dir=vm_dir,
        base_image=driver.images.path(record["image_id"]),
        seed_iso=Path(keep) / seed.name,
        hostname=hostname,
    )


def bare_boot(vm: BareVm, workdir: Path) -> tuple[float, float | None]:
    """Seconds from exec of QEMU to the readiness line in its serial log, and QEMU's
    CPU-seconds then."""
    bare_dir = workdir / "bare"
    shutil.rmtree(bare_dir, ignore_errors=True)
    bare_dir.mkdir(mode=0o700)
    shutil.copy(vm.seed_iso, bare_dir / vm.seed_iso.name)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(vm.base_image), "-F", "qcow2",
         str(bare_dir / "root.qcow2"), "1G"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    argv = [a.replace(str(vm.vm_dir), str(bare_dir)) for a in vm.argv]
    log = bare_dir / "console.log"
    try:
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"bare QEMU failed: {done.stderr.strip()[-500:]}")
        while True:
            with suppress(FileNotFoundError):
                if _ready(log.read_text(errors="replace"), vm.hostname):
                    return time.monotonic() - started, qemu_cpu_seconds(bare_dir / "qemu.pid")
            if time.monotonic() - started > BOOT_TIMEOUT:
                raise BenchError(f"bare QEMU not ready after {BOOT_TIMEOUT:.0f}s")
            time.sleep(POLL)
    finally:
        pid = read_pidfile(bare_dir / "qemu.pid")
        if pid is not None:
            kill_now(pid, str(bare_dir))
        kill_under(bare_dir)


# --------------------------------------------------------------------------- main


def run(rounds: int, workdir: Path, image: Path | None = None) -> Report:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        raise BenchError("QEMU is not installed (scripts/install-system-deps)")
    report = Report(
        machine={
            "cpus": os.cpu_count(),
            "accel": detect_accel(),
            "platform": platform.platform(),
            "load_1m": os.getloadavg()[0],
            "image": str(image) if image is not None else "test image",
        }
    )
    data_dir = workdir / "d"
    with alto_up(data_dir, workdir / "alto-up.log", image) as url:
        api = Api(url)
        for n in range(rounds):
            name = f"boot-{n + 1}"
            vm_id, api_s, accept_ms = api.boot(name)
            api_cpu = qemu_cpu_seconds(data_dir / "qemu" / "vms" / vm_id / "qemu.pid")
            bare = capture(data_dir, vm_id, name)
            api.destroy(vm_id)
            bare_s, bare_cpu = bare_boot(bare, workdir)
            report.rounds.append(
                Round(round(api_s, 3), round(bare_s, 3), round(accept_ms, 1), api_cpu, bare_cpu)
            )
            print(
                f"round {n + 1}: altostack {api_s:6.2f} s   bare {bare_s:6.2f} s   "
                f"ratio {api_s / bare_s:.2f}   (POST answered in {accept_ms:.0f} ms; "
                f"QEMU CPU {api_cpu} / {bare_cpu} s, load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
                flush=True,
            )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", type=Path, help="work directory to keep (logs)")
    parser.add_argument(
        "--image",
        type=Path,
        help="qcow2 to boot instead of the current test image (e.g. an older build, for an "
        "A/B of two images: alternate runs with and without it)",
    )
    args = parser.parse_args()
    # A short path: QEMU's unix sockets live under it (108-byte limit).
    workdir = Path(tempfile.mkdtemp(prefix="alto-boot-", dir=args.keep))
    try:
        image = None if args.image is None else args.image.resolve()
        report = run(args.rounds, workdir, image)
    except BenchError as err:
        print(f"boot benchmark could not run: {err}", file=sys.stderr)
        return 2
    finally:
        kill_under(workdir)
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result = report.as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"boot to readiness ({report.machine['accel']}, {len(report.rounds)} rounds, "
            f"medians): altostack {result['median_altostack_s']:.2f} s, bare QEMU "
            f"{result['median_bare_s']:.2f} s, ratio {result['ratio']:.2f} "
            f"(target <= {TARGET_RATIO}: {'met' if result['met'] else 'NOT met'}); QEMU CPU "
            f"{result['median_altostack_cpu_s']} / {result['median_bare_cpu_s']} s"
        )
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
