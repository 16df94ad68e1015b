"""``/v1/nics`` (+ attach/detach), ``/v1/eips`` (+ bind/unbind), ``/v1/ip-pools`` (admin)
and ``/v1/nat-gateways`` with their SNAT and DNAT rules.

Bookkeeping answers at once (201/204); what the hosts must apply (attach, detach, bind,
unbind, NAT gateways) answers 202 with the operation that pushes it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.network_edge_schemas import (
    DnatRuleCreate,
    EipAccepted,
    EipBind,
    EipCreate,
    EipOut,
    EipUpdate,
    Empty,
    IpPoolCreate,
    IpPoolOut,
    NatGatewayAccepted,
    NatGatewayCreate,
    NatGatewayOut,
    NatRuleOut,
    NicAccepted,
    NicAttach,
    NicCreate,
    NicOut,
    NicUpdate,
    SnatRuleCreate,
)
from altostack.api.schemas import PROBLEMS, ListOf

router = APIRouter(tags=["network"])
Id40 = Annotated[str | None, Query(max_length=40)]
TenantQ = Annotated[str | None, Query(max_length=40, description="admins only")]


# -- NICs ------------------------------------------------------------------------------------


@router.post(
    "/v1/nics",
    status_code=201,
    response_model=NicOut,
    name="nic.create",
    openapi_extra=permission("nic:create"),
    responses=PROBLEMS,
)
async def create_nic(body: NicCreate, ctx: Ctx, c: C, response: Response) -> NicOut:
    """An elastic NIC: an address of the subnet (given or the next free) and a MAC."""
    out = await c.nics.create(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/nics/{out['id']}"
    return NicOut.model_validate(out)


@router.get(
    "/v1/nics",
    response_model=ListOf[NicOut],
    name="nic.list",
    openapi_extra=permission("nic:read"),
    responses=PROBLEMS,
)
async def list_nics(
    ctx: Ctx,
    c: C,
    page: Paging,
    vm_id: Id40 = None,
    subnet_id: Id40 = None,
    vpc_id: Id40 = None,
    tenant_id: TenantQ = None,
) -> ListOf[NicOut]:
    items, cursor = await c.nics.list(
        ctx, vm_id=vm_id, subnet_id=subnet_id, vpc_id=vpc_id, tenant_id=tenant_id,
        limit=page.limit, cursor=page.cursor,
    )  # fmt: skip
    return ListOf[NicOut](items=[NicOut.model_validate(n) for n in items], next_cursor=cursor)


@router.get(
    "/v1/nics/{id}",
    response_model=NicOut,
    name="nic.get",
    openapi_extra=permission("nic:read"),
    responses=PROBLEMS,
)
async def get_nic(id: str, ctx: Ctx, c: C) -> NicOut:
    return NicOut.model_validate(await c.nics.get(ctx, id))


@router.patch(
    "/v1/nics/{id}",
    response_model=NicOut,
    name="nic.update",
    openapi_extra=permission("nic:update"),
    responses=PROBLEMS,
)
async def update_nic(id: str, body: NicUpdate, ctx: Ctx, c: C) -> NicOut:
    """Change the NIC's security groups; a bound NIC's host applies them at once."""
    return NicOut.model_validate(await c.nics.update(ctx, id, body.security_group_ids))


@router.delete(
    "/v1/nics/{id}",
    status_code=204,
    name="nic.delete",
    openapi_extra=permission("nic:delete"),
    responses=PROBLEMS,
)
async def delete_nic(id: str, ctx: Ctx, c: C) -> Response:
    """Only an unbound elastic NIC (409 otherwise); its address is freed."""
    await c.nics.delete(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/nics/{id}/actions/attach",
    status_code=202,
    response_model=NicAccepted,
    name="nic.attach",
    openapi_extra=permission("nic:update"),
    responses=PROBLEMS,
)
async def attach_nic(id: str, body: NicAttach, ctx: Ctx, c: C) -> NicAccepted:
    """To a running or stopped VM with fewer than 6 NICs; MAC and address stay."""
    return NicAccepted.model_validate(await c.nics.attach(ctx, id, body.vm_id))


@router.post(
    "/v1/nics/{id}/actions/detach",
    status_code=202,
    response_model=NicAccepted,
    name="nic.detach",
    openapi_extra=permission("nic:update"),
    responses=PROBLEMS,
)
async def detach_nic(id: str, ctx: Ctx, c: C, body: Empty | None = None) -> NicAccepted:
    """Elastic NICs only; the primary NIC goes with its VM."""
    return NicAccepted.model_validate(await c.nics.detach(ctx, id))


# -- public IP pools (platform administrators) ---------------------------------------------


@router.post(
    "/v1/ip-pools",
    status_code=201,
    response_model=IpPoolOut,
    name="ip-pool.create",
    openapi_extra=permission("ip-pool:create"),
    responses=PROBLEMS,
)
async def create_pool(body: IpPoolCreate, ctx: Ctx, c: C, response: Response) -> IpPoolOut:
    """A public network of the region: elastic IPs and VPC routers' addresses come from it."""
    out = await c.ip_pools.create(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/ip-pools/{out['id']}"
    return IpPoolOut.model_validate(out)


@router.get(
    "/v1/ip-pools",
    response_model=ListOf[IpPoolOut],
    name="ip-pool.list",
    openapi_extra=permission("ip-pool:read"),
    responses=PROBLEMS,
)
async def list_pools(ctx: Ctx, c: C) -> ListOf[IpPoolOut]:
    items = await c.ip_pools.list(ctx)
    return ListOf[IpPoolOut](items=[IpPoolOut.model_validate(p) for p in items], next_cursor=None)


@router.get(
    "/v1/ip-pools/{id}",
    response_model=IpPoolOut,
    name="ip-pool.get",
    openapi_extra=permission("ip-pool:read"),
    responses=PROBLEMS,
)
async def get_pool(id: str, ctx: Ctx, c: C) -> IpPoolOut:
    return IpPoolOut.model_validate(await c.ip_pools.get(ctx, id))


@router.delete(
    "/v1/ip-pools/{id}",
    status_code=204,
    name="ip-pool.delete",
    openapi_extra=permission("ip-pool:delete"),
    responses=PROBLEMS,
)
async def delete_pool(id: str, ctx: Ctx, c: C) -> Response:
    """Refused (409) while any address of the pool is in use."""
    await c.ip_pools.delete(ctx, id)
    return Response(status_code=204)


# -- elastic IPs ---------------------------------------------------------------------------


@router.post(
    "/v1/eips",
    status_code=202,
    response_model=EipAccepted,
    name="eip.create",
    openapi_extra=permission("eip:create"),
    responses=PROBLEMS,
)
async def allocate_eip(body: EipCreate, ctx: Ctx, c: C, response: Response) -> EipAccepted:
    """A public address of the region's pool, never another tenant's (quota ``eips``)."""
    out = await c.eips.allocate(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/eips/{out['eip']['id']}"
    return EipAccepted.model_validate(out)


@router.get(
    "/v1/eips",
    response_model=ListOf[EipOut],
    name="eip.list",
    openapi_extra=permission("eip:read"),
    responses=PROBLEMS,
)
async def list_eips(
    ctx: Ctx,
    c: C,
    page: Paging,
    state: Annotated[str | None, Query(max_length=16)] = None,
    tenant_id: TenantQ = None,
) -> ListOf[EipOut]:
    items, cursor = await c.eips.list(
        ctx, state=state, tenant_id=tenant_id, limit=page.limit, cursor=page.cursor
    )
    return ListOf[EipOut](items=[EipOut.model_validate(e) for e in items], next_cursor=cursor)


@router.get(
    "/v1/eips/{id}",
    response_model=EipOut,
    name="eip.get",
    openapi_extra=permission("eip:read"),
    responses=PROBLEMS,
)
async def get_eip(id: str, ctx: Ctx, c: C) -> EipOut:
    return EipOut.model_validate(await c.eips.get(ctx, id))


@router.patch(
    "/v1/eips/{id}",
    response_model=EipOut,
    name="eip.update",
    openapi_extra=permission("eip:update"),
    responses=PROBLEMS,
)
async def update_eip(id: str, body: EipUpdate, ctx: Ctx, c: C) -> EipOut:
    """The bandwidth limit, changed online."""
    return EipOut.model_validate(await c.eips.update(ctx, id, body.bandwidth_mbps))


@router.delete(
    "/v1/eips/{id}",
    status_code=204,
    name="eip.delete",
    openapi_extra=permission("eip:delete"),
    responses=PROBLEMS,
)
async def release_eip(id: str, ctx: Ctx, c: C) -> Response:
    """Release an unbound EIP (409 while bound)."""
    await c.eips.release(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/eips/{id}/actions/bind",
    status_code=202,
    response_model=EipAccepted,
    name="eip.bind",
    openapi_extra=permission("eip:update"),
    responses=PROBLEMS,
)
async def bind_eip(id: str, body: EipBind, ctx: Ctx, c: C) -> EipAccepted:
    """To a VM (its primary NIC), a NIC or a NAT gateway: one target, only when unbound."""
    return EipAccepted.model_validate(await c.eips.bind(ctx, id, body.model_dump()))


@router.post(
    "/v1/eips/{id}/actions/unbind",
    status_code=202,
    response_model=EipAccepted,
    name="eip.unbind",
    openapi_extra=permission("eip:update"),
    responses=PROBLEMS,
)
async def unbind_eip(id: str, ctx: Ctx, c: C, body: Empty | None = None) -> EipAccepted:
    return EipAccepted.model_validate(await c.eips.unbind(ctx, id))


# -- NAT gateways --------------------------------------------------------------------------


@router.post(
    "/v1/nat-gateways",
    status_code=202,
    response_model=NatGatewayAccepted,
    name="nat-gateway.create",
    openapi_extra=permission("nat-gateway:create"),
    responses=PROBLEMS,
)
async def create_nat(
    body: NatGatewayCreate, ctx: Ctx, c: C, response: Response
) -> NatGatewayAccepted:
    """A NAT gateway in a VPC, translating through its elastic IP (quota ``nat_gateways``)."""
    out = await c.nat_gateways.create(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/nat-gateways/{out['nat_gateway']['id']}"
    return NatGatewayAccepted.model_validate(out)


@router.get(
    "/v1/nat-gateways",
    response_model=ListOf[NatGatewayOut],
    name="nat-gateway.list",
    openapi_extra=permission("nat-gateway:read"),
    responses=PROBLEMS,
)
async def list_nats(
    ctx: Ctx, c: C, page: Paging, vpc_id: Id40 = None, tenant_id: TenantQ = None
) -> ListOf[NatGatewayOut]:
    items, cursor = await c.nat_gateways.list(
        ctx, vpc_id=vpc_id, tenant_id=tenant_id, limit=page.limit, cursor=page.cursor
    )
    return ListOf[NatGatewayOut](
        items=[NatGatewayOut.model_validate(n) for n in items], next_cursor=cursor
    )


@router.get(
    "/v1/nat-gateways/{id}",
    response_model=NatGatewayOut,
    name="nat-gateway.get",
    openapi_extra=permission("nat-gateway:read"),
    responses=PROBLEMS,
)
async def get_nat(id: str, ctx: Ctx, c: C) -> NatGatewayOut:
    return NatGatewayOut.model_validate(await c.nat_gateways.get(ctx, id))


@router.delete(
    "/v1/nat-gateways/{id}",
    status_code=202,
    response_model=NatGatewayAccepted,
    name="nat-gateway.delete",
    openapi_extra=permission("nat-gateway:delete"),
    responses=PROBLEMS,
)
async def delete_nat(id: str, ctx: Ctx, c: C) -> NatGatewayAccepted:
    """Its rules go with it and its EIP is unbound."""
    return NatGatewayAccepted.model_validate(await c.nat_gateways.delete(ctx, id))


@router.post(
    "/v1/nat-gateways/{id}/snat-rules",
    status_code=201,
    response_model=NatRuleOut,
    name="nat-gateway.snat.create",
    openapi_extra=permission("nat-gateway:update"),
    responses=PROBLEMS,
)
async def add_snat(id: str, body: SnatRuleCreate, ctx: Ctx, c: C) -> NatRuleOut:
    """Egress of a whole subnet or one VM through the gateway's EIP (one rule per source
    across the VPC: 409 for a second)."""
    rule = await c.nat_gateways.add_rule(ctx, id, {"kind": "snat", **body.model_dump()})
    return NatRuleOut.model_validate(rule)


@router.post(
    "/v1/nat-gateways/{id}/dnat-rules",
    status_code=201,
    response_model=NatRuleOut,
    name="nat-gateway.dnat.create",
    openapi_extra=permission("nat-gateway:update"),
    responses=PROBLEMS,
)
async def add_dnat(id: str, body: DnatRuleCreate, ctx: Ctx, c: C) -> NatRuleOut:
    """``EIP:public_port`` to a VM's port (409 when the public port is already mapped)."""
    rule = await c.nat_gateways.add_rule(ctx, id, {"kind": "dnat", **body.model_dump()})
    return NatRuleOut.model_validate(rule)


@router.delete(
    "/v1/nat-gateways/{id}/rules/{rule_id}",
    status_code=204,
    name="nat-gateway.rule.delete",
    openapi_extra=permission("nat-gateway:update"),
    responses=PROBLEMS,
)
async def delete_nat_rule(id: str, rule_id: str, ctx: Ctx, c: C) -> Response:
    await c.nat_gateways.delete_rule(ctx, id, rule_id)
    return Response(status_code=204)
