"""App build benchmark: CPU to build the API app and serve its first requests.

``create_app`` hands the routers' own route objects to each app. The baseline is the same
app built the usual FastAPI way, ``include_router`` per router, which makes FastAPI rebuild
every route's parameter and response models for that app on its first request. Every
test (and every ``alto up``) builds an app, so the cost is paid per test.

Both variants run in this process, alternated, on one container (SQLite, sim drivers): per
round, build the app and send three requests through it in-process (``httpx`` over ASGI):
``GET /healthz``, ``GET /v1/vms`` (a 401: routing and dependency set-up run all the same)
and ``GET /v1/no-such-thing`` (a 404, which tries every route, as a test's many requests
do between them). It prints the median CPU seconds of each and the
ratio altostack / baseline (lower is better; the target: at most 0.1).

    .venv/bin/python bench/app_build.py [--rounds 7] [--json]

Exit status: 0 when the target is met, 1 when it is not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from altostack.api.app import ROUTERS, create_app
from altostack.bootstrap import Container, build
from altostack.settings import Settings

TARGET_RATIO = 0.1
PATHS = ("/healthz", "/v1/vms", "/v1/no-such-thing")


def included(container: Container) -> FastAPI:
    """The baseline: the same app with each router included, as FastAPI's docs do it."""
    app = create_app(container, manage_lifecycle=False)
    app.router.routes.clear()
    for router in ROUTERS:
        app.include_router(router)
    return app


async def cpu_of(make: Callable[[Container], FastAPI], container: Container) -> float:
    started = time.process_time()
    app = make(container)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for path in PATHS:
            await client.get(path)
    return time.process_time() - started


async def run(rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="alto-bench-app-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            db=f"sqlite+aiosqlite:///{tmp}/alto.db",
            bootstrap_admin_password="Bench-Admin-Pass-1",
            driver="sim",
            network_driver="sim",
            log_format="console",
        )
        container = build(settings)
        await container.start()
        try:
            await cpu_of(create_app, container)  # imports and caches warm for both
            ours, base = [], []
            for _ in range(rounds):
                ours.append(await cpu_of(create_app, container))
                base.append(await cpu_of(included, container))
        finally:
            await container.stop()
    result = {"altostack_s": statistics.median(ours), "baseline_s": statistics.median(base)}
    result["ratio"] = result["altostack_s"] / result["baseline_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    if args.json:
        print(json.dumps({**result, "date": datetime.now(UTC).isoformat(timespec="seconds")}))
    else:
        print(f"app build + {len(PATHS)} first requests, CPU, median of {args.rounds}:")
        print(f"  altostack (routers' own routes)   {result['altostack_s'] * 1000:8.1f} ms")
        print(f"  baseline (include_router)         {result['baseline_s'] * 1000:8.1f} ms")
        ratio = f"{result['ratio']:8.3f} (target <= {TARGET_RATIO})"
        print(f"  ratio altostack / baseline        {ratio}")
    return 0 if result["ratio"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
