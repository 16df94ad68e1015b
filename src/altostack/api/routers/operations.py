"""Operations: follow asynchronous work (``?wait=`` long-polls)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, ListOf, OperationOut
from altostack.services.operations import MAX_WAIT_SECONDS, operation_view

router = APIRouter(prefix="/v1/operations", tags=["operations"])

State = Literal["pending", "running", "succeeded", "failed"]


@router.get(
    "",
    response_model=ListOf[OperationOut],
    name="operation.list",
    openapi_extra=permission("operation:read"),
    responses=PROBLEMS,
)
async def list_operations(
    ctx: Ctx,
    c: C,
    page: Paging,
    resource_id: Annotated[str | None, Query(max_length=64)] = None,
    state: State | None = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
) -> ListOf[OperationOut]:
    """Operations, newest first, filtered by resource, state or kind."""
    result = await c.operations.list(
        ctx,
        resource_id=resource_id,
        state=state,
        kind=kind,
        tenant_id=tenant_id,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[OperationOut](
        items=[OperationOut.model_validate(operation_view(op)) for op in result.items],
        next_cursor=result.next_cursor,
    )


@router.get(
    "/{id}",
    response_model=OperationOut,
    name="operation.get",
    openapi_extra=permission("operation:read"),
    responses=PROBLEMS,
)
async def get_operation(
    id: str,
    ctx: Ctx,
    c: C,
    wait: Annotated[
        float | None,
        Query(ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for the end"),
    ] = None,
) -> OperationOut:
    """One operation; with ``wait`` the answer comes when it ends or the time runs out."""
    if wait:
        return OperationOut.model_validate(operation_view(await c.operations.wait(ctx, id, wait)))
    return OperationOut.model_validate(await c.operations.view(ctx, id))
