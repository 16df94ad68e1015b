"""The pure helpers of bench/api.py: wrk output parsing and the ratio arithmetic."""

from __future__ import annotations

import argparse
import json
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import pytest
from bench.api import (
    WrkResult,
    duration_ms,
    median_result,
    operation_row,
    paired_ratios,
    parse_cpus,
    parse_wrk,
)
from bench.bare_app import make_app

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40123/v1/operations/op-1m85jpcd4q5xwcyf
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms  812.00us  28.10ms   91.30%
    Req/Sec    15.30k     1.02k   16.90k    80.00%
  Latency Distribution
     50%    4.02ms
     75%    4.40ms
     90%    5.01ms
     99%    7.93ms
  152301 requests in 10.00s, 71.23MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:  15226.77
Transfer/sec:      7.12MB
"""


def test_parse_wrk() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r.requests_per_sec == pytest.approx(15226.77)
    assert r.requests == 152301
    assert r.avg_ms == pytest.approx(4.21)
    assert r.max_ms == pytest.approx(28.10)
    assert (r.p50_ms, r.p75_ms, r.p90_ms, r.p99_ms) == pytest.approx((4.02, 4.40, 5.01, 7.93))
    assert r.non_2xx == 3
    assert r.socket_errors == {"connect": 0, "read": 1, "write": 0, "timeout": 2}
    assert r.errors == 6


def test_parse_wrk_clean_run_with_mixed_units() -> None:
    text = (
        WRK_OUTPUT.replace("  Non-2xx or 3xx responses: 3\n", "")
        .replace("  Socket errors: connect 0, read 1, write 0, timeout 2\n", "")
        .replace("     99%    7.93ms", "     99%    1.20s ")
        .replace("     50%    4.02ms", "     50%  950.00us")
    )
    r = parse_wrk(text)
    assert r.errors == 0
    assert r.p50_ms == pytest.approx(0.95)
    assert r.p99_ms == pytest.approx(1200.0)


def test_parse_wrk_rejects_output_without_latency_distribution() -> None:
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "99%" not in line)
    with pytest.raises(ValueError, match="99"):
        parse_wrk(without)


def test_duration_units() -> None:
    assert duration_ms("250.00", "us") == pytest.approx(0.25)
    assert duration_ms("2", "s") == 2000.0
    assert duration_ms("1.5", "m") == 90_000.0


def _result(rps: float) -> WrkResult:
    return WrkResult(rps, int(rps * 10), 1.0, 2.0, 1.0, 1.0, 1.0, 2.0)


def test_median_and_paired_ratios() -> None:
    runs = [_result(300), _result(100), _result(200)]
    assert median_result(runs).requests_per_sec == 200
    assert median_result(runs[:2]).requests_per_sec == 100  # a real round, never a blend
    assert paired_ratios([_result(50), _result(60)], [_result(100), _result(200)]) == [
        0.5,
        0.3,
    ]
    with pytest.raises(ValueError):
        paired_ratios([_result(1)], [])


def test_parse_cpus() -> None:
    assert parse_cpus("0") == {0}
    assert parse_cpus("0,2-3") == {0, 2, 3}
    with pytest.raises(argparse.ArgumentTypeError):
        parse_cpus(",")


def test_operation_row_states() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    running = operation_row("op-x", "tenant-x", "running", now)
    assert running["finished_at"] is None and running["result"] is None
    done = operation_row("op-x", "tenant-x", "succeeded", now)
    assert done["finished_at"] == now and done["progress"] == 100
    with pytest.raises(ValueError):
        operation_row("op-x", "tenant-x", "pending", now)


async def test_bare_app_answers_the_constant_body() -> None:
    body = json.dumps({"id": "op-x"}).encode()
    app = make_app(body)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/"}, receive, send)
    assert sent[0]["status"] == 200
    assert (b"content-length", str(len(body)).encode()) in sent[0]["headers"]
    assert sent[1]["body"] == body
