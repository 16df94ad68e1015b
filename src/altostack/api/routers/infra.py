"""Regions, clusters and hosts (platform administrators); host registration for agents."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from altostack.api.compute_schemas import (
    ClusterCreate,
    ClusterOut,
    ClusterUpdate,
    HostOut,
    HostRegister,
    HostRegistered,
    JoinToken,
    RegionCreate,
    RegionOut,
)
from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, ListOf
from altostack.services.context import Principal, RequestContext

router = APIRouter(tags=["infrastructure"])


@router.post(
    "/v1/regions",
    status_code=201,
    response_model=RegionOut,
    name="region.create",
    openapi_extra=permission("region:create"),
    responses=PROBLEMS,
)
async def create_region(body: RegionCreate, ctx: Ctx, c: C) -> RegionOut:
    return RegionOut.model_validate(await c.infra.create_region(ctx, body.name, body.description))


@router.get(
    "/v1/regions",
    response_model=ListOf[RegionOut],
    name="region.list",
    openapi_extra=permission("region:read"),
    responses=PROBLEMS,
)
async def list_regions(ctx: Ctx, c: C) -> ListOf[RegionOut]:
    return ListOf[RegionOut](
        items=[RegionOut.model_validate(r) for r in await c.infra.list_regions(ctx)]
    )


@router.get(
    "/v1/regions/{id}",
    response_model=RegionOut,
    name="region.get",
    openapi_extra=permission("region:read"),
    responses=PROBLEMS,
)
async def get_region(id: str, ctx: Ctx, c: C) -> RegionOut:
    return RegionOut.model_validate(await c.infra.get_region(ctx, id))


@router.delete(
    "/v1/regions/{id}",
    status_code=204,
    name="region.delete",
    openapi_extra=permission("region:delete"),
    responses=PROBLEMS,
)
async def delete_region(id: str, ctx: Ctx, c: C) -> Response:
    await c.infra.delete_region(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/clusters",
    status_code=201,
    response_model=ClusterOut,
    name="cluster.create",
    openapi_extra=permission("cluster:create"),
    responses=PROBLEMS,
)
async def create_cluster(body: ClusterCreate, ctx: Ctx, c: C) -> ClusterOut:
    return ClusterOut.model_validate(await c.infra.create_cluster(ctx, **body.model_dump()))


@router.get(
    "/v1/clusters",
    response_model=ListOf[ClusterOut],
    name="cluster.list",
    openapi_extra=permission("cluster:read"),
    responses=PROBLEMS,
)
async def list_clusters(
    ctx: Ctx, c: C, region_id: Annotated[str | None, Query(max_length=40)] = None
) -> ListOf[ClusterOut]:
    items = await c.infra.list_clusters(ctx, region_id)
    return ListOf[ClusterOut](items=[ClusterOut.model_validate(x) for x in items])


@router.get(
    "/v1/clusters/{id}",
    response_model=ClusterOut,
    name="cluster.get",
    openapi_extra=permission("cluster:read"),
    responses=PROBLEMS,
)
async def get_cluster(id: str, ctx: Ctx, c: C) -> ClusterOut:
    return ClusterOut.model_validate(await c.infra.get_cluster(ctx, id))


@router.patch(
    "/v1/clusters/{id}",
    response_model=ClusterOut,
    name="cluster.update",
    openapi_extra=permission("cluster:update"),
    responses=PROBLEMS,
)
async def update_cluster(id: str, body: ClusterUpdate, ctx: Ctx, c: C) -> ClusterOut:
    """Overcommit ratios can only go up (lowering them could strand running VMs)."""
    out = await c.infra.update_cluster(ctx, id, **body.model_dump())
    return ClusterOut.model_validate(out)


@router.delete(
    "/v1/clusters/{id}",
    status_code=204,
    name="cluster.delete",
    openapi_extra=permission("cluster:delete"),
    responses=PROBLEMS,
)
async def delete_cluster(id: str, ctx: Ctx, c: C) -> Response:
    await c.infra.delete_cluster(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/clusters/{id}/actions/join-token",
    response_model=JoinToken,
    name="cluster.join-token",
    openapi_extra=permission("cluster:update"),
    responses=PROBLEMS,
)
async def join_token(id: str, ctx: Ctx, c: C) -> JoinToken:
    """A new token for agents to join this cluster (the old one stops working)."""
    return JoinToken(cluster_id=id, join_token=await c.infra.issue_join_token(ctx, id))


@router.post(
    "/v1/hosts/register",
    status_code=201,
    response_model=HostRegistered,
    name="host.register",
    responses=PROBLEMS,
)
async def register_host(body: HostRegister, c: C, request: Request) -> HostRegistered:
    """Called by ``alto agent --join``: authenticated by the cluster's join token."""
    report = body.model_dump(exclude={"join_token", "hostname"})
    host, token = await c.infra.register_host(
        body.join_token, hostname=body.hostname, report=report
    )
    state = request.scope["state"]
    state["ctx"] = RequestContext(
        Principal(
            user_id=host["id"],
            username=f"agent@{body.hostname}",
            tenant_id="system",
            tenant_name="system",
            role="agent",
            is_platform_admin=False,
            auth_method="join-token",
        ),
        state.get("request_id"),
    )
    return HostRegistered(host=HostOut.model_validate(host), agent_token=token, bus=c.settings.bus)


@router.get(
    "/v1/hosts",
    response_model=ListOf[HostOut],
    name="host.list",
    openapi_extra=permission("host:read"),
    responses=PROBLEMS,
)
async def list_hosts(
    ctx: Ctx,
    c: C,
    page: Paging,
    cluster_id: Annotated[str | None, Query(max_length=40)] = None,
    state: Literal["up", "down", "maintenance", "disabled"] | None = None,
) -> ListOf[HostOut]:
    items, cursor = await c.infra.list_hosts(
        ctx, cluster_id=cluster_id, state=state, limit=page.limit, cursor=page.cursor
    )
    return ListOf[HostOut](items=[HostOut.model_validate(h) for h in items], next_cursor=cursor)


@router.get(
    "/v1/hosts/{id}",
    response_model=HostOut,
    name="host.get",
    openapi_extra=permission("host:read"),
    responses=PROBLEMS,
)
async def get_host(id: str, ctx: Ctx, c: C) -> HostOut:
    return HostOut.model_validate(await c.infra.get_host(ctx, id))


def _host_action(verb: str, doc: str) -> None:
    async def act(id: str, ctx: Ctx, c: C) -> HostOut:
        return HostOut.model_validate(await c.infra.set_admin_state(ctx, id, verb))

    act.__doc__ = doc
    router.add_api_route(
        f"/v1/hosts/{{id}}/actions/{verb}",
        act,
        methods=["POST"],
        response_model=HostOut,
        name=f"host.{verb}",
        openapi_extra=permission(f"host:{verb}"),
        responses=PROBLEMS,
    )


_host_action("enable", "Let the scheduler place new VMs on the host again.")
_host_action("disable", "No new VMs; running ones stay.")
_host_action("maintain", "Maintenance: no new VMs (evacuation comes with host HA).")


@router.delete(
    "/v1/hosts/{id}",
    status_code=204,
    name="host.delete",
    openapi_extra=permission("host:delete"),
    responses=PROBLEMS,
)
async def delete_host(id: str, ctx: Ctx, c: C) -> Response:
    await c.infra.delete_host(ctx, id)
    return Response(status_code=204)
