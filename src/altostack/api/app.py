"""The FastAPI application: routers, error mapping, middleware, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from altostack import __version__
from altostack.api import problems
from altostack.api.middleware import ApiMiddleware
from altostack.api.routers import (
    api_keys,
    auth,
    catalog,
    console,
    events,
    health,
    infra,
    network,
    network_edge,
    operations,
    quotas,
    roles,
    storage,
    tenants,
    users,
    vm_host,
    vms,
)

if TYPE_CHECKING:
    from altostack.bootstrap import Container

# Routes are matched in order: the hot polling path goes first.
ROUTERS = [
    operations.router,
    health.router,
    auth.router,
    tenants.router,
    users.router,
    roles.router,
    api_keys.router,
    quotas.router,
    infra.router,
    catalog.router,
    vms.router,
    console.router,
    network.router,
    storage.router,
    network_edge.router,
    vm_host.router,
    events.router,
]


class AltoApi(FastAPI):
    """FastAPI with :class:`ApiMiddleware` in front of the framework's own middleware stack
    rather than inside it.

    The middleware already turns every failure into a problem response, so Starlette's
    error, telemetry and body-limit layers only add work to each request; for the polled
    ``GET /v1/operations/{id}`` fast path they were ~10 % of the server's CPU (py-spy).
    Routed requests still pass through all of them.
    """

    front: ApiMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without the front middleware: FastAPI's stack, then the routes."""
        await super().__call__(scope, receive, send)


def create_app(
    container: Container,
    *,
    manage_lifecycle: bool = True,
    on_started: Callable[[], None] | None = None,
) -> AltoApi:
    """Build the API around a container; with ``manage_lifecycle`` the app starts and stops
    it (the server's case), otherwise the caller does (tests that share a container)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle and not container.started:
            await container.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            if manage_lifecycle:
                await container.stop()

    app = AltoApi(
        title="Altostack API",
        version=__version__,
        description="A lightweight private cloud. Conventions: see docs/api.md.",
        lifespan=lifespan,
        # Metrics are Prometheus (api/metrics.py); FastAPI's OpenTelemetry hook would only
        # cost a provider check on every request (~40 µs measured).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.container = container
    problems.install(app)
    # The routers' own routes rather than include_router: FastAPI rebuilds every included
    # route's parameter and response models for each app, on its first request (0.5 s of
    # CPU, measured); tests build an app each. No router needs anything of an include
    # (its prefix and tags are its own) and the routes keep no per-app state; only
    # ``app.dependency_overrides`` would not reach them, and nothing uses it.
    app.router.routes.extend(route for router in ROUTERS for route in router.routes)
    console.mount_novnc(app, container.settings.novnc_dir)
    for plugin in container.plugins:
        hook = getattr(plugin, "altostack_plugin", None)
        if hook is not None:
            hook(app, container)
    app.front = ApiMiddleware(app.framework, container=container)
    return app
