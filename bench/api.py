"""API read benchmark: authenticated ``GET /v1/operations/{id}`` against a bare ASGI app.

Both servers run as subprocesses on free loopback ports with the same uvicorn settings
(uvloop, httptools, one process, no access log), one at a time so they never compete for
the CPU. ``wrk`` (one thread) drives each with the same connections and duration; the
script prints requests/s, p50 and p99 for both, and the ratio altostack / bare, which the
project's target says must be at least 0.40.

Setup on the real server: ``alto up`` on a fresh data directory, log in as the bootstrap
admin, write one finished operation straight into its SQLite database with the project's
own ``Database`` and ``Operation`` model, and check once that the GET answers 200 with that
operation (a benchmark of 401s is worthless). The bare app then answers with the very same
bytes.

    .venv/bin/python bench/api.py [--duration 10] [--connections 64] [--rounds 3] [--json]

Exit status: 0 when the target is met, 1 when it is not, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
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
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ADMIN_PASSWORD = "Bench-Admin-Pass-1"
TARGET_RATIO = 0.40
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 30.0
BUSY_LOAD = 0.5


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and missed the target)."""


# --------------------------------------------------------------------------- wrk output


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([0-9.]+)(us|ms|s|m|h)"


def duration_ms(value: str, unit: str) -> float:
    """A wrk duration (``812.00us``, ``1.25ms``, ``2.00s``) in milliseconds."""
    return float(value) * _UNIT_MS[unit]


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    avg_ms: float
    max_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(output: str) -> WrkResult:
    """Parse the text ``wrk --latency`` prints; raises ValueError when it is not there."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    latency = re.search(rf"^\s*Latency\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}", output, re.M)
    if not (rps and total and latency):
        raise ValueError(f"not wrk --latency output:\n{output}")
    percentiles: dict[int, float] = {}
    for pct, value, unit in re.findall(
        rf"^\s+(50|75|90|99)(?:\.0+)?%\s+{_DURATION}\s*$", output, re.M
    ):
        percentiles[int(pct)] = duration_ms(value, unit)
    missing = {50, 75, 90, 99} - percentiles.keys()
    if missing:
        raise ValueError(f"wrk output lacks the latency distribution ({sorted(missing)}%)")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        requests=int(total.group(1)),
        avg_ms=duration_ms(latency.group(1), latency.group(2)),
        max_ms=duration_ms(latency.group(5), latency.group(6)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def paired_ratios(alto: Sequence[WrkResult], bare: Sequence[WrkResult]) -> list[float]:
    """Throughput ratio altostack / bare of each round (the two ran back to back)."""
    if not alto or len(alto) != len(bare):
        raise ValueError("need one bare result per altostack result")
    return [
        a.requests_per_sec / b.requests_per_sec if b.requests_per_sec else 0.0
        for a, b in zip(alto, bare, strict=True)
    ]


def median_result(results: Sequence[WrkResult]) -> WrkResult:
    """The round with the median throughput (a real round, not a blend of several)."""
    if not results:
        raise ValueError("no results")
    ordered = sorted(results, key=lambda r: r.requests_per_sec)
    return ordered[(len(ordered) - 1) // 2]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _affinity(cpus: set[int] | None) -> Any:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


class Server:
    """One server subprocess; stopped by its PID (SIGTERM, then SIGKILL) within bounds."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str],
        cpus: set[int] | None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_affinity(cpus),
            start_new_session=True,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, path: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                status, _ = http_request("GET", self.base + path, timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f}s:\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._log.close()


@contextmanager
def running(server: Server, ready_path: str) -> Iterator[Server]:
    try:
        server.wait_ready(ready_path)
        yield server
    finally:
        server.stop()


def http_request(
    method: str,
    url: str,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


# --------------------------------------------------------------------------- altostack


def alto_executable() -> str:
    candidate = Path(sys.executable).parent / "alto"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("alto")
    if found is None:
        raise BenchError("the `alto` command is missing; run `make deps` and use .venv/bin/python")
    return found


def alto_env(data_dir: Path) -> dict[str, str]:
    # Nothing from the caller's ALTO_* environment (a database URL, plugins, a config
    # file) may leak into the measured server: it runs on defaults plus these.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTO_")}
    env.update(
        ALTO_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ALTO_LOG_LEVEL="warning",
        ALTO_DATA_DIR=str(data_dir),
        ALTO_DRIVER="sim",  # one sim host as always: no QEMU host beside the measured server
    )
    return env


def login(base: str) -> tuple[str, str]:
    """A bearer token for the bootstrap admin, and the admin's tenant id."""
    status, raw = http_request(
        "POST",
        base + "/v1/auth/tokens",
        body={"username": "admin", "password": ADMIN_PASSWORD, "tenant": "system"},
    )
    if status != 201:
        raise BenchError(f"login answered {status}: {raw[:500]!r}")
    data = json.loads(raw)
    return str(data["token"]), str(data["user"]["tenant_id"])


OP_STATES = ("running", "succeeded")


def operation_row(op_id: str, tenant_id: str, state: str, now: datetime) -> dict[str, Any]:
    """The operation the benchmark reads: a kind no worker handles, so nothing changes it.

    ``running`` (the default) is what clients poll; ``succeeded`` is the final answer.
    """
    if state not in OP_STATES:
        raise ValueError(f"state must be one of {OP_STATES}")
    finished = state == "succeeded"
    return {
        "id": op_id,
        "kind": "bench.noop",
        "tenant_id": tenant_id,
        "resource_type": "bench",
        "resource_id": None,
        "state": state,
        "progress": 100 if finished else 50,
        "input": {},
        "checkpoint": {},
        "result": {"ok": True} if finished else None,
        "attempts": 1,
        "request_id": "bench-api",
        "created_at": now - timedelta(seconds=1),
        "started_at": now - timedelta(seconds=1),
        "finished_at": now if finished else None,
        "not_before": now,
    }


async def _insert_operation(db_path: Path, tenant_id: str, state: str) -> str:
    # Imported here so the bare half and the wrk parsing never need the project installed.
    from altostack.db.database import Database
    from altostack.db.models import Operation
    from altostack.db.types import utcnow
    from altostack.domain.ids import new_id

    db = Database(f"sqlite+aiosqlite:///{db_path}")
    try:
        op_id = new_id("op")
        async with db.uow() as uow:
            uow.operations.add(Operation(**operation_row(op_id, tenant_id, state, utcnow())))
            await uow.commit()
        return op_id
    finally:
        await db.dispose()


def create_operation(data_dir: Path, tenant_id: str, state: str) -> str:
    """Write the operation into the server's SQLite file (WAL: the server keeps running)."""
    db_path = data_dir / "altostack.db"
    if not db_path.exists():
        raise BenchError(f"the server made no database at {db_path}")
    return asyncio.run(_insert_operation(db_path, tenant_id, state))


def check_get(url: str, token: str, op_id: str) -> bytes:
    """One GET before the load: it must be a 200 carrying the operation."""
    status, raw = http_request("GET", url, headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        raise BenchError(f"GET {url} answered {status}, not 200: {raw[:500]!r}")
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("id") != op_id:
        raise BenchError(f"GET {url} did not return operation {op_id}: {raw[:500]!r}")
    return raw


# --------------------------------------------------------------------------- wrk


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError(
            "wrk is not installed; run ./scripts/install-system-deps (Debian package `wrk`)"
        )
    return found


def wrk_version(wrk: str) -> str:
    try:
        out = subprocess.run(
            [wrk, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.split(" Copyright")[0]


@dataclass
class Load:
    connections: int
    duration: int
    warmup: int
    threads: int = 1
    op_state: str = "running"
    timeout: int = 10  # wrk drops answers slower than this from the latency figures
    wrk_cpus: set[int] | None = None
    server_cpus: set[int] | None = None


def run_wrk(wrk: str, url: str, load: Load, seconds: int, headers: Sequence[str]) -> WrkResult:
    argv = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        "--latency",
        f"--timeout={load.timeout}s",
        *[arg for header in headers for arg in ("-H", header)],
        url,
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
            preexec_fn=_affinity(load.wrk_cpus),
        )
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"wrk did not finish within {seconds + 60}s") from err
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    try:
        return parse_wrk(done.stdout)
    except ValueError as err:
        raise BenchError(str(err)) from err


def measure(wrk: str, url: str, load: Load, headers: Sequence[str], name: str) -> WrkResult:
    if load.warmup > 0:
        run_wrk(wrk, url, load, load.warmup, headers)
    result = run_wrk(wrk, url, load, load.duration, headers)
    if result.errors:
        raise BenchError(
            f"{name}: {result.non_2xx} non-2xx responses and socket errors "
            f"{result.socket_errors} under load; the numbers would be meaningless"
        )
    return result


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    bare: WrkResult
    altostack: WrkResult
    ratio: float
    round_ratios: list[float]
    target: float
    passed: bool
    rounds: dict[str, list[WrkResult]]
    settings: dict[str, Any]
    machine: dict[str, Any]


def machine_info(wrk: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version(wrk),
    }


def bench_altostack(
    wrk: str, load: Load, workdir: Path, round_no: int, state: dict[str, Any]
) -> WrkResult:
    data_dir = workdir / "altostack-data"
    port = free_port()
    server = Server(
        "altostack",
        [alto_executable(), "up", "--port", str(port), "--data-dir", str(data_dir)],
        port,
        workdir / f"altostack-{round_no}.log",
        alto_env(data_dir),
        load.server_cpus,
    )
    with running(server, "/healthz"):
        if "token" not in state:
            token, tenant_id = login(server.base)
            state["token"] = token
            state["op_id"] = create_operation(data_dir, tenant_id, load.op_state)
        url = f"{server.base}/v1/operations/{state['op_id']}"
        state["body"] = check_get(url, state["token"], state["op_id"])
        return measure(wrk, url, load, [f"Authorization: Bearer {state['token']}"], "altostack")


def bench_bare(
    wrk: str, load: Load, workdir: Path, round_no: int, state: dict[str, Any]
) -> WrkResult:
    body_file = workdir / "body.json"
    body_file.write_bytes(state["body"])
    port = free_port()
    server = Server(
        "bare",
        [
            sys.executable,
            str(BENCH_DIR / "bare_app.py"),
            "--port",
            str(port),
            "--body-file",
            str(body_file),
        ],
        port,
        workdir / f"bare-{round_no}.log",
        dict(os.environ),
        load.server_cpus,
    )
    url = f"{server.base}/v1/operations/{state['op_id']}"
    with running(server, "/"):
        status, raw = http_request("GET", url)
        if status != 200 or raw != state["body"]:
            raise BenchError(f"bare app answered {status} {raw[:200]!r}")
        return measure(wrk, url, load, ["Authorization: Bearer not-checked"], "bare")


def run(load: Load, rounds: int, target: float, keep: Path | None, progress: bool) -> Report:
    wrk = wrk_path()
    machine = machine_info(wrk)
    if progress and machine["load_average_1m_at_start"] > BUSY_LOAD:
        print(
            f"warning: load average {machine['load_average_1m_at_start']} before the run; "
            "other processes will compete for the CPU and skew both sides",
            file=sys.stderr,
        )
    rounds_out: dict[str, list[WrkResult]] = {"altostack": [], "bare": []}
    state: dict[str, Any] = {}
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="alto-bench-", dir=keep))
    if progress and keep is not None:
        print(f"logs and database kept in {workdir}", file=sys.stderr)
    try:
        for n in range(1, rounds + 1):
            for name, fn in (("altostack", bench_altostack), ("bare", bench_bare)):
                result = fn(wrk, load, workdir, n, state)
                rounds_out[name].append(result)
                if progress:
                    print(
                        f"round {n}/{rounds} {name:9}: {result.requests_per_sec:9.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    round_ratios = paired_ratios(rounds_out["altostack"], rounds_out["bare"])
    ratio = statistics.median(round_ratios)
    return Report(
        bare=median_result(rounds_out["bare"]),
        altostack=median_result(rounds_out["altostack"]),
        ratio=ratio,
        round_ratios=round_ratios,
        target=target,
        passed=ratio >= target,
        rounds=rounds_out,
        settings={
            "endpoint": "GET /v1/operations/{id} (Authorization: Bearer)",
            "wrk_threads": load.threads,
            "connections": load.connections,
            "duration_s": load.duration,
            "warmup_s": load.warmup,
            "wrk_timeout_s": load.timeout,
            "rounds": rounds,
            "operation_state": load.op_state,
            "body_bytes": len(state.get("body", b"")),
            "server_cpus": sorted(load.server_cpus) if load.server_cpus else "any",
            "wrk_cpus": sorted(load.wrk_cpus) if load.wrk_cpus else "any",
            "uvicorn": "loop=uvloop http=httptools workers=1 access_log=off",
        },
        machine=machine,
    )


def format_table(report: Report) -> str:
    """The human summary: per-side medians, the ratio and the verdict."""
    s = report.settings
    lines = [f"{'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}   req/s per round"]
    for name, key in (("bare ASGI", "bare"), ("altostack", "altostack")):
        r = report.bare if key == "bare" else report.altostack
        per_round = " ".join(f"{x.requests_per_sec:.0f}" for x in report.rounds[key])
        lines.append(
            f"{name:<10} {r.requests_per_sec:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}   {per_round}"
        )
    p99 = report.altostack.p99_ms / report.bare.p99_ms if report.bare.p99_ms else float("nan")
    lines += [
        "",
        f"throughput altostack/bare: {report.ratio:.3f} "
        f"(median of rounds: {', '.join(f'{x:.3f}' for x in report.round_ratios)})",
        f"p99 latency altostack/bare: {p99:.1f}x",
        f"target >= {report.target:.2f}: {'PASS' if report.passed else 'FAIL'}",
        f"({s['rounds']} round(s), each side's median by req/s; wrk -t{s['wrk_threads']} "
        f"-c{s['connections']} -d{s['duration_s']}s after {s['warmup_s']}s warm-up; "
        f"{s['operation_state']} operation, body {s['body_bytes']} B; "
        f"python {report.machine['python']}, {report.machine['cpus']} CPUs)",
    ]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    return {
        "bare": asdict(report.bare),
        "altostack": asdict(report.altostack),
        "ratio": round(report.ratio, 4),
        "round_ratios": [round(x, 4) for x in report.round_ratios],
        "target": report.target,
        "passed": report.passed,
        "rounds": {k: [asdict(r) for r in v] for k, v in report.rounds.items()},
        "settings": report.settings,
        "machine": report.machine,
    }


def parse_cpus(value: str) -> set[int]:
    """``0`` or ``0,1`` or ``0-1`` as a CPU set."""
    cpus: set[int] = set()
    for part in value.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        elif part.strip():
            cpus.add(int(part))
    if not cpus:
        raise argparse.ArgumentTypeError(f"no CPUs in {value!r}")
    return cpus


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Authenticated GET /v1/operations/{id} vs a bare ASGI app (same run).",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds measured (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up first (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument(
        "--timeout", type=int, default=10, help="wrk per-request timeout, seconds (10)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument(
        "--op-state", choices=OP_STATES, default="running", help="operation read (running)"
    )
    parser.add_argument("--target", type=float, default=TARGET_RATIO, help="ratio (0.40)")
    parser.add_argument("--server-cpus", type=parse_cpus, help="pin servers, e.g. 0")
    parser.add_argument("--wrk-cpus", type=parse_cpus, help="pin wrk, e.g. 1")
    parser.add_argument("--keep", type=Path, help="keep the work dir (logs, db) under here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.duration, args.connections, args.rounds, args.timeout) < 1 or args.warmup < 0:
        print("duration, connections, rounds and timeout must be >= 1", file=sys.stderr)
        return 2
    load = Load(
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        op_state=args.op_state,
        timeout=args.timeout,
        wrk_cpus=args.wrk_cpus,
        server_cpus=args.server_cpus,
    )
    # SIGTERM/SIGHUP become exceptions, so the finally blocks stop every server.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        report = run(load, args.rounds, args.target, args.keep, progress=True)
    except BenchError as err:
        print(f"bench/api.py: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/api.py: interrupted", file=sys.stderr)
        return 2
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report_json(report), indent=2) + "\n")
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_table(report))
    return 0 if report.passed else 1


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
