"""``/v1/vpcs``, ``/v1/subnets`` (creates and deletes are operations, 202) and
``/v1/security-groups`` with their rules (synchronous, 201/204)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.network_schemas import (
    RuleCreate,
    RuleOut,
    SecurityGroupCreate,
    SecurityGroupOut,
    SubnetAccepted,
    SubnetCreate,
    SubnetOut,
    VpcAccepted,
    VpcCreate,
    VpcOut,
)
from altostack.api.schemas import PROBLEMS, ListOf
from altostack.services.network import subnet_view, vpc_view

router = APIRouter(tags=["network"])


@router.post(
    "/v1/vpcs",
    status_code=202,
    response_model=VpcAccepted,
    name="vpc.create",
    openapi_extra=permission("vpc:create"),
    responses=PROBLEMS,
)
async def create_vpc(body: VpcCreate, ctx: Ctx, c: C, response: Response) -> VpcAccepted:
    """A VPC with its default security group; CIDRs may overlap other VPCs'."""
    out = await c.network.create_vpc(ctx, body.name, body.cidr)
    response.headers["Location"] = f"/v1/vpcs/{out['vpc']['id']}"
    return VpcAccepted.model_validate(out)


@router.get(
    "/v1/vpcs",
    response_model=ListOf[VpcOut],
    name="vpc.list",
    openapi_extra=permission("vpc:read"),
    responses=PROBLEMS,
)
async def list_vpcs(
    ctx: Ctx,
    c: C,
    page: Paging,
    name: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[VpcOut]:
    found = await c.network.list_vpcs(
        ctx, name=name, tenant_id=tenant_id, limit=page.limit, cursor=page.cursor
    )
    return ListOf[VpcOut](
        items=[VpcOut.model_validate(vpc_view(v)) for v in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/vpcs/{id}",
    response_model=VpcOut,
    name="vpc.get",
    openapi_extra=permission("vpc:read"),
    responses=PROBLEMS,
)
async def get_vpc(id: str, ctx: Ctx, c: C) -> VpcOut:
    return VpcOut.model_validate(await c.network.get_vpc(ctx, id))


@router.delete(
    "/v1/vpcs/{id}",
    status_code=202,
    response_model=VpcAccepted,
    name="vpc.delete",
    openapi_extra=permission("vpc:delete"),
    responses=PROBLEMS,
)
async def delete_vpc(id: str, ctx: Ctx, c: C) -> VpcAccepted:
    """Refused (409) while the VPC has subnets."""
    return VpcAccepted.model_validate(await c.network.delete_vpc(ctx, id))


@router.post(
    "/v1/subnets",
    status_code=202,
    response_model=SubnetAccepted,
    name="subnet.create",
    openapi_extra=permission("subnet:create"),
    responses=PROBLEMS,
)
async def create_subnet(body: SubnetCreate, ctx: Ctx, c: C, response: Response) -> SubnetAccepted:
    """A subnet inside its VPC's CIDR, overlapping none of the VPC's other subnets."""
    out = await c.network.create_subnet(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/subnets/{out['subnet']['id']}"
    return SubnetAccepted.model_validate(out)


@router.get(
    "/v1/subnets",
    response_model=ListOf[SubnetOut],
    name="subnet.list",
    openapi_extra=permission("subnet:read"),
    responses=PROBLEMS,
)
async def list_subnets(
    ctx: Ctx,
    c: C,
    page: Paging,
    vpc_id: Annotated[str | None, Query(max_length=40)] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[SubnetOut]:
    found = await c.network.list_subnets(
        ctx, vpc_id=vpc_id, name=name, tenant_id=tenant_id, limit=page.limit, cursor=page.cursor
    )
    return ListOf[SubnetOut](
        items=[SubnetOut.model_validate(subnet_view(s)) for s in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/subnets/{id}",
    response_model=SubnetOut,
    name="subnet.get",
    openapi_extra=permission("subnet:read"),
    responses=PROBLEMS,
)
async def get_subnet(id: str, ctx: Ctx, c: C) -> SubnetOut:
    return SubnetOut.model_validate(await c.network.get_subnet(ctx, id))


@router.delete(
    "/v1/subnets/{id}",
    status_code=202,
    response_model=SubnetAccepted,
    name="subnet.delete",
    openapi_extra=permission("subnet:delete"),
    responses=PROBLEMS,
)
async def delete_subnet(id: str, ctx: Ctx, c: C) -> SubnetAccepted:
    """Refused (409) while addresses of the subnet are in use."""
    return SubnetAccepted.model_validate(await c.network.delete_subnet(ctx, id))


@router.post(
    "/v1/security-groups",
    status_code=201,
    response_model=SecurityGroupOut,
    name="security-group.create",
    openapi_extra=permission("security-group:create"),
    responses=PROBLEMS,
)
async def create_group(
    body: SecurityGroupCreate, ctx: Ctx, c: C, response: Response
) -> SecurityGroupOut:
    """An empty group (no rule: nothing in, nothing out) in a VPC."""
    out = await c.security_groups.create(ctx, **body.model_dump())
    response.headers["Location"] = f"/v1/security-groups/{out['id']}"
    return SecurityGroupOut.model_validate(out)


@router.get(
    "/v1/security-groups",
    response_model=ListOf[SecurityGroupOut],
    name="security-group.list",
    openapi_extra=permission("security-group:read"),
    responses=PROBLEMS,
)
async def list_groups(
    ctx: Ctx,
    c: C,
    page: Paging,
    vpc_id: Annotated[str | None, Query(max_length=40)] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[SecurityGroupOut]:
    items, next_cursor = await c.security_groups.list(
        ctx, vpc_id=vpc_id, name=name, tenant_id=tenant_id, limit=page.limit, cursor=page.cursor
    )
    return ListOf[SecurityGroupOut](
        items=[SecurityGroupOut.model_validate(g) for g in items], next_cursor=next_cursor
    )


@router.get(
    "/v1/security-groups/{id}",
    response_model=SecurityGroupOut,
    name="security-group.get",
    openapi_extra=permission("security-group:read"),
    responses=PROBLEMS,
)
async def get_group(id: str, ctx: Ctx, c: C) -> SecurityGroupOut:
    return SecurityGroupOut.model_validate(await c.security_groups.get(ctx, id))


@router.delete(
    "/v1/security-groups/{id}",
    status_code=204,
    name="security-group.delete",
    openapi_extra=permission("security-group:delete"),
    responses=PROBLEMS,
)
async def delete_group(id: str, ctx: Ctx, c: C) -> Response:
    """Refused (409) for a VPC's default group and a group other groups' rules name."""
    await c.security_groups.delete(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/security-groups/{id}/rules",
    status_code=201,
    response_model=RuleOut,
    name="security-group.rule.create",
    openapi_extra=permission("security-group:update"),
    responses=PROBLEMS,
)
async def add_rule(id: str, body: RuleCreate, ctx: Ctx, c: C) -> RuleOut:
    """Rules of all a port's groups are tried by priority (deny first at equal priority);
    the first match decides; no match drops. Stateful: replies always pass."""
    return RuleOut.model_validate(await c.security_groups.add_rule(ctx, id, body.model_dump()))


@router.delete(
    "/v1/security-groups/{id}/rules/{rule_id}",
    status_code=204,
    name="security-group.rule.delete",
    openapi_extra=permission("security-group:update"),
    responses=PROBLEMS,
)
async def delete_rule(id: str, rule_id: str, ctx: Ctx, c: C) -> Response:
    await c.security_groups.delete_rule(ctx, id, rule_id)
    return Response(status_code=204)
