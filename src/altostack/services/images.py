"""Images: metadata, visibility and import (from a URL or an upload).

An image is usable (``available``) only once its bytes are stored and verified. URL
imports run as operations (``image.import``) so a slow download never holds a request;
uploads stream straight into the store.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import ColumnElement, or_

from altostack.db.database import Database
from altostack.db.models_compute import Image, Vm
from altostack.db.repositories import Page, page_of
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from altostack.domain.ids import new_id
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.domain.permissions import is_read
from altostack.services import authz
from altostack.services.context import SYSTEM, RequestContext
from altostack.services.image_store import ImageStore
from altostack.services.operations import OperationService
from altostack.services.quotas import QuotaService


def image_view(i: Image) -> dict[str, Any]:
    return {
        "id": i.id,
        "tenant_id": i.tenant_id,
        "name": i.name,
        "os_family": i.os_family,
        "os_version": i.os_version,
        "arch": i.arch,
        "format": i.format,
        "size_bytes": i.size_bytes,
        "virtual_size_bytes": i.virtual_size_bytes,
        "checksum_sha256": i.checksum_sha256,
        "min_disk_gib": i.min_disk_gib,
        "visibility": i.visibility,
        "shared_with": list(i.shared_with or []),
        "state": i.state,
        "error": i.error,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    }


def can_see(ctx: RequestContext, image: Image) -> bool:
    p = ctx.principal
    return (
        p.is_platform_admin
        or image.tenant_id == p.tenant_id
        or image.visibility == "public"
        or (image.visibility == "shared" and p.tenant_id in (image.shared_with or []))
    )


class ImageService:
    def __init__(
        self,
        db: Database,
        store: ImageStore,
        operations: OperationService,
        quotas: QuotaService | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.operations = operations
        self.quotas = quotas

    async def _take_quota(self, uow: UnitOfWork, tenant_id: str) -> None:
        """Images count against the tenant's ``images`` quota from creation (an image in
        ``error`` still holds its place until deleted, as a VM in error does). The
        platform's own images (the built-in ``system`` principal, no tenant row) count
        against nothing."""
        if self.quotas is not None and tenant_id != SYSTEM.tenant_id:
            await self.quotas.consume(uow, tenant_id, "images", 1)

    async def create(
        self, ctx: RequestContext, *, source_url: str | None, **fields: Any
    ) -> tuple[dict[str, Any], Any]:
        """Register an image; with ``source_url`` an import operation is queued, without
        one the image waits for ``PUT /v1/images/{id}/file``."""
        authz.require(ctx, "image:create")
        if fields.get("visibility") == "public" and not ctx.principal.is_platform_admin:
            raise PermissionDenied("only platform administrators publish public images")
        if source_url is not None and not re.match(r"^https?://", source_url):
            raise InvalidRequest.for_field("source_url", "must be an http:// or https:// URL")
        async with self.db.uow() as uow:
            await self._take_quota(uow, ctx.principal.tenant_id)
            image = Image(
                id=new_id("img"),
                tenant_id=ctx.principal.tenant_id,
                state="importing",
                source={"url": source_url} if source_url else {"upload": True},
                **fields,
            )
            uow.session.add(image)
            op = None
            if source_url is not None:
                op = self.operations.create(
                    uow,
                    ctx,
                    "image.import",
                    resource_type="image",
                    resource_id=image.id,
                    input={"url": source_url},
                )
            await uow.commit()
        return image_view(image), op

    async def _load(self, uow: UnitOfWork, ctx: RequestContext, image_id: str, perm: str) -> Image:
        image = await uow.session.get(Image, image_id)
        if image is None or not can_see(ctx, image):
            raise NotFound.resource("image", image_id)
        foreign = image.tenant_id != ctx.principal.tenant_id
        if not is_read(perm) and foreign and not ctx.principal.is_platform_admin:
            raise PermissionDenied(
                f"image {image_id} is shared with you: you can use it but not change it"
            )
        authz.require(ctx, perm, tenant_id=ctx.principal.tenant_id, kind="image", ident=image_id)
        return image

    async def get(self, ctx: RequestContext, image_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return image_view(await self._load(uow, ctx, image_id, "image:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        state: str | None,
        visibility: str | None,
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[Image]:
        authz.require(ctx, "image:read")
        p = ctx.principal
        where: list[ColumnElement[bool]] = []
        if not p.is_platform_admin:
            where.append(
                or_(
                    Image.tenant_id == p.tenant_id,
                    Image.visibility == "public",
                    Image.visibility == "shared",
                )
            )
        for column, value in (
            (Image.state, state),
            (Image.visibility, visibility),
            (Image.name, name),
        ):
            if value:
                where.append(column == value)
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, Image, where, limit=limit, cursor=cursor)
        # "shared" images are visible only to the tenants they are shared with.
        page.items = [i for i in page.items if can_see(ctx, i)]
        return page

    async def upload(
        self,
        ctx: RequestContext,
        image_id: str,
        chunks: AsyncIterator[bytes],
        checksum: str | None,
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            image = await self._load(uow, ctx, image_id, "image:update")
            if image.state != "importing" or not image.source.get("upload"):
                raise Conflict(
                    f"image {image_id} is {image.state}; only a new image takes an upload"
                )
            expected = checksum or image.checksum_sha256
        try:
            stored = await self.store.put(image_id, chunks, expected)
        except InvalidRequest as exc:
            await self._fail(image_id, exc.detail)
            raise
        return await self._complete(image_id, stored)

    async def export_vm(
        self, ctx: RequestContext, vm_id: str, *, name: str, **fields: Any
    ) -> tuple[dict[str, Any], Any]:
        """Make an image of a stopped VM's root disk: the image (``importing``) and its
        ``image.export`` operation, which pulls the disk from the VM's host agent.

        The image belongs to the VM's tenant and starts as what the VM was made from (OS,
        architecture); its minimum disk is the VM's root disk. Live export is not offered:
        a running guest's disk is not consistent, so anything but ``stopped`` is a 409
        naming the state (stop the VM first)."""
        async with self.db.uow() as uow:
            vm = await uow.session.get(Vm, vm_id)
            authz.require(
                ctx,
                "vm:export-image",
                tenant_id=vm.tenant_id if vm else None,
                kind="VM",
                ident=vm_id,
                tags=vm.tags if vm else None,
            )
            assert vm is not None
            authz.require(ctx, "image:create")
            if vm.state != "stopped" or not vm.host_id:
                raise Conflict(
                    f"cannot export VM {vm.id} as an image: it is {vm.state}; only a stopped "
                    "VM's disk is exported (stop it first)",
                    extra={"current_state": vm.state},
                )
            await self._take_quota(uow, vm.tenant_id)
            base = await uow.session.get(Image, vm.image_id)
            image = Image(
                id=new_id("img"),
                tenant_id=vm.tenant_id,
                name=name,
                os_family=fields.get("os_family") or (base.os_family if base else "linux"),
                os_version=fields.get("os_version") or (base.os_version if base else None),
                arch=vm.arch,
                min_disk_gib=vm.root_disk_gib,
                visibility="private",
                shared_with=[],
                state="importing",
                source={"vm_id": vm.id, "image_id": vm.image_id},
            )
            uow.session.add(image)
            op = self.operations.create(
                uow,
                ctx,
                "image.export",
                resource_type="image",
                resource_id=image.id,
                input={"vm_id": vm.id, "host_id": vm.host_id},
                tenant_id=vm.tenant_id,
            )
            ctx.audit.resource_type, ctx.audit.resource_id = "image", image.id
            ctx.audit.details = {**ctx.audit.details, "vm_id": vm.id}
            await uow.commit()
        return image_view(image), op

    async def receive(
        self, image_id: str, chunks: AsyncIterator[bytes], expected_sha256: str | None = None
    ) -> dict[str, Any]:
        """Store an image's bytes produced by the platform itself (a VM export): streamed
        and checksummed like an upload, ``available`` when complete, ``error`` if not."""
        try:
            stored = await self.store.put(image_id, chunks, expected_sha256)
        except InvalidRequest as exc:
            await self._fail(image_id, exc.detail)
            raise PermanentError(exc.detail, "ExportFailed") from exc
        try:
            return await self._complete(image_id, stored)
        except NotFound as exc:
            raise PermanentError(f"image {image_id} was deleted during the export") from exc

    async def fail(self, image_id: str, reason: str) -> None:
        """Mark an image ``error`` with the reason (a failed import or export)."""
        await self._fail(image_id, reason)

    async def _complete(self, image_id: str, stored: Any) -> dict[str, Any]:
        async with self.db.uow() as uow:
            image = await uow.session.get(Image, image_id)
            if image is None:
                self.store.delete(image_id)
                raise NotFound.resource("image", image_id)
            image.format = stored.format
            image.size_bytes = stored.size_bytes
            image.virtual_size_bytes = stored.virtual_size_bytes
            image.checksum_sha256 = stored.sha256
            gib = -(-stored.virtual_size_bytes // 1024**3)
            image.min_disk_gib = max(image.min_disk_gib or 1, gib, 1)
            image.state = "available"
            image.error = None
            await uow.commit()
        return image_view(image)

    async def _fail(self, image_id: str, reason: str) -> None:
        async with self.db.uow() as uow:
            image = await uow.session.get(Image, image_id)
            if image is not None:
                image.state = "error"
                image.error = reason
                await uow.commit()

    async def run_import(self, image_id: str, url: str) -> dict[str, Any]:
        """The body of the ``image.import`` operation: download, verify, store."""
        async with self.db.uow(write=False) as uow:
            image = await uow.session.get(Image, image_id)
        if image is None:
            raise PermanentError(f"image {image_id} no longer exists")
        if image.state == "available":
            return image_view(image)  # a resumed operation that already finished

        async def download() -> AsyncIterator[bytes]:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as client,
                client.stream("GET", url, follow_redirects=True) as response,
            ):
                if response.status_code >= 500:
                    raise TemporaryError(f"{url} answered {response.status_code}", delay=5)
                if response.status_code != 200:
                    raise PermanentError(f"{url} answered {response.status_code}", "ImportFailed")
                async for chunk in response.aiter_bytes():
                    yield chunk

        try:
            stored = await self.store.put(image_id, download(), image.checksum_sha256)
        except InvalidRequest as exc:
            await self._fail(image_id, exc.detail)
            raise PermanentError(exc.detail, "ImportFailed") from exc
        except PermanentError as exc:
            await self._fail(image_id, str(exc))
            raise
        except httpx.HTTPError as exc:
            raise TemporaryError(f"download from {url} failed: {exc}", delay=5) from exc
        return await self._complete(image_id, stored)

    async def read(
        self, ctx: RequestContext, image_id: str
    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        async with self.db.uow(write=False) as uow:
            image = await self._load(uow, ctx, image_id, "image:read")
        if image.state != "available" or not self.store.exists(image_id):
            raise Conflict(f"image {image_id} is {image.state}; it has no data to download")
        return image_view(image), self.store.read(image_id)

    async def update(self, ctx: RequestContext, image_id: str, **fields: Any) -> dict[str, Any]:
        async with self.db.uow() as uow:
            image = await self._load(uow, ctx, image_id, "image:update")
            if fields.get("visibility") == "public" and not ctx.principal.is_platform_admin:
                raise PermissionDenied("only platform administrators publish public images")
            for key, value in fields.items():
                setattr(image, key, value)
            await uow.commit()
        return image_view(image)

    async def delete(self, ctx: RequestContext, image_id: str) -> None:
        """Refused while a VM uses the image (reinstall and recovery need it)."""
        async with self.db.uow() as uow:
            image = await self._load(uow, ctx, image_id, "image:delete")
            in_use = await uow.session.scalar(
                Vm.__table__.select()
                .with_only_columns(Vm.id)
                .where(Vm.image_id == image_id, Vm.state != "deleted")
                .limit(1)
            )
            if in_use is not None:
                raise Conflict(f"image {image_id} is used by VM {in_use}; delete the VMs first")
            await uow.session.delete(image)
            if self.quotas is not None and image.tenant_id != SYSTEM.tenant_id:
                await self.quotas.release(uow, image.tenant_id, "images", 1)
            await uow.commit()
        self.store.delete(image_id)
