"""Instance types and images."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from altostack.api.compute_schemas import (
    ImageCreate,
    ImageOut,
    ImageUpdate,
    InstanceTypeCreate,
    InstanceTypeList,
    InstanceTypeOut,
    VmExportImage,
)
from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, ListOf, OperationOut
from altostack.services.images import image_view
from altostack.services.operations import operation_view

router = APIRouter(tags=["catalog"])


class ImageAccepted(BaseModel):
    operation: OperationOut
    image: ImageOut


@router.post(
    "/v1/instance-types",
    status_code=201,
    response_model=InstanceTypeOut,
    name="instance-type.create",
    openapi_extra=permission("instance-type:create"),
    responses=PROBLEMS,
)
async def create_type(body: InstanceTypeCreate, ctx: Ctx, c: C) -> InstanceTypeOut:
    return InstanceTypeOut.model_validate(await c.instance_types.create(ctx, **body.model_dump()))


@router.get(
    "/v1/instance-types",
    response_model=InstanceTypeList,
    name="instance-type.list",
    openapi_extra=permission("instance-type:read"),
    responses=PROBLEMS,
)
async def list_types(ctx: Ctx, c: C, include_disabled: bool = False) -> InstanceTypeList:
    items = await c.instance_types.list(ctx, include_disabled=include_disabled)
    return InstanceTypeList(items=[InstanceTypeOut.model_validate(t) for t in items])


@router.get(
    "/v1/instance-types/{id}",
    response_model=InstanceTypeOut,
    name="instance-type.get",
    openapi_extra=permission("instance-type:read"),
    responses=PROBLEMS,
)
async def get_type(id: str, ctx: Ctx, c: C) -> InstanceTypeOut:
    """By id or by name (``c1.small``)."""
    return InstanceTypeOut.model_validate(await c.instance_types.get(ctx, id))


@router.post(
    "/v1/instance-types/{id}/actions/disable",
    response_model=InstanceTypeOut,
    name="instance-type.disable",
    openapi_extra=permission("instance-type:update"),
    responses=PROBLEMS,
)
async def disable_type(id: str, ctx: Ctx, c: C) -> InstanceTypeOut:
    return InstanceTypeOut.model_validate(await c.instance_types.set_enabled(ctx, id, False))


@router.post(
    "/v1/instance-types/{id}/actions/enable",
    response_model=InstanceTypeOut,
    name="instance-type.enable",
    openapi_extra=permission("instance-type:update"),
    responses=PROBLEMS,
)
async def enable_type(id: str, ctx: Ctx, c: C) -> InstanceTypeOut:
    return InstanceTypeOut.model_validate(await c.instance_types.set_enabled(ctx, id, True))


@router.delete(
    "/v1/instance-types/{id}",
    status_code=204,
    name="instance-type.delete",
    openapi_extra=permission("instance-type:delete"),
    responses=PROBLEMS,
)
async def delete_type(id: str, ctx: Ctx, c: C) -> Response:
    """Existing VMs keep their size."""
    await c.instance_types.delete(ctx, id)
    return Response(status_code=204)


@router.post(
    "/v1/images",
    status_code=201,
    response_model=ImageOut,
    name="image.create",
    openapi_extra=permission("image:create"),
    responses={**PROBLEMS, 202: {"description": "import from source_url queued"}},
)
async def create_image(body: ImageCreate, ctx: Ctx, c: C, response: Response) -> ImageOut:
    """Register an image. With ``source_url`` the import runs as an operation (see the
    ``Location`` and ``X-Operation-Id`` headers); without, upload the bytes with
    ``PUT /v1/images/{id}/file``."""
    fields = body.model_dump(exclude={"source_url"})
    image, op = await c.images.create(ctx, source_url=body.source_url, **fields)
    response.headers["Location"] = f"/v1/images/{image['id']}"
    if op is not None:
        response.status_code = 202
        response.headers["X-Operation-Id"] = op.id
    return ImageOut.model_validate(image)


@router.get(
    "/v1/images",
    response_model=ListOf[ImageOut],
    name="image.list",
    openapi_extra=permission("image:read"),
    responses=PROBLEMS,
)
async def list_images(
    ctx: Ctx,
    c: C,
    page: Paging,
    state: Literal["importing", "available", "error"] | None = None,
    visibility: Literal["private", "public", "shared"] | None = None,
    name: Annotated[str | None, Query(max_length=128)] = None,
) -> ListOf[ImageOut]:
    found = await c.images.list(
        ctx, state=state, visibility=visibility, name=name, limit=page.limit, cursor=page.cursor
    )
    return ListOf[ImageOut](
        items=[ImageOut.model_validate(image_view(i)) for i in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/images/{id}",
    response_model=ImageOut,
    name="image.get",
    openapi_extra=permission("image:read"),
    responses=PROBLEMS,
)
async def get_image(id: str, ctx: Ctx, c: C) -> ImageOut:
    return ImageOut.model_validate(await c.images.get(ctx, id))


@router.patch(
    "/v1/images/{id}",
    response_model=ImageOut,
    name="image.update",
    openapi_extra=permission("image:update"),
    responses=PROBLEMS,
)
async def update_image(id: str, body: ImageUpdate, ctx: Ctx, c: C) -> ImageOut:
    out = await c.images.update(ctx, id, **body.model_dump(exclude_unset=True))
    return ImageOut.model_validate(out)


@router.put(
    "/v1/images/{id}/file",
    response_model=ImageOut,
    name="image.upload",
    openapi_extra={
        **permission("image:update"),
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
    },
    responses=PROBLEMS,
)
async def upload_image(
    id: str,
    ctx: Ctx,
    c: C,
    request: Request,
    checksum_sha256: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F]{64}$")] = None,
) -> ImageOut:
    """Stream the image bytes (qcow2, raw or vmdk); the format is detected, the checksum
    verified; nothing is kept if either fails."""

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    return ImageOut.model_validate(await c.images.upload(ctx, id, chunks(), checksum_sha256))


@router.get(
    "/v1/images/{id}/file",
    name="image.download",
    openapi_extra=permission("image:read"),
    responses={**PROBLEMS, 200: {"content": {"application/octet-stream": {}}}},
)
async def download_image(id: str, ctx: Ctx, c: C) -> StreamingResponse:
    """Export: the image's bytes as stored, with their SHA-256 (``X-Checksum-Sha256``
    in hex, and ``Repr-Digest`` as RFC 9530 has it) so a client can verify the download."""
    image, chunks = await c.images.read(ctx, id)
    sha = str(image["checksum_sha256"])
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(image["size_bytes"]),
            "Content-Disposition": f'attachment; filename="{id}.{image["format"]}"',
            "X-Checksum-Sha256": sha,
            "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:",
        },
    )


@router.post(
    "/v1/vms/{id}/actions/export-image",
    status_code=202,
    response_model=ImageAccepted,
    name="vm.export-image",
    tags=["vms"],
    openapi_extra=permission("vm:export-image"),
    responses=PROBLEMS,
)
async def export_vm_image(
    id: str, body: VmExportImage, ctx: Ctx, c: C, response: Response
) -> ImageAccepted:
    """Make an image of a stopped VM's root disk (also needs ``image:create``). The image
    is ``importing`` until the operation has copied and checksummed the disk, then
    ``available``; a VM that is not stopped is a 409 naming its state (no live export)."""
    image, op = await c.images.export_vm(ctx, id, **body.model_dump(exclude_none=True))
    response.headers["Location"] = f"/v1/images/{image['id']}"
    return ImageAccepted(
        operation=OperationOut.model_validate(operation_view(op)),
        image=ImageOut.model_validate(image),
    )


@router.delete(
    "/v1/images/{id}",
    status_code=204,
    name="image.delete",
    openapi_extra=permission("image:delete"),
    responses=PROBLEMS,
)
async def delete_image(id: str, ctx: Ctx, c: C) -> Response:
    """Refused while a VM uses the image."""
    await c.images.delete(ctx, id)
    return Response(status_code=204)
