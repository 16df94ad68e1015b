"""The ``image.export`` operation: a stopped VM's root disk becomes an image.

The VM's host agent pins the disk (a copy-on-write clone, so the VM may start again at
once) and serves a compact qcow2 of it; this handler pulls it in 512 KiB pieces over the
bus (each piece a small, idempotent request: a lost one is simply asked again) into the
image store, which hashes it on the way, then tells the agent to drop the pin. Nothing
passes through memory whole, and the image is ``available`` only once every byte is in
and checksummed. Progress moves with the bytes.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import structlog

from altostack.controllers.compute import ComputeController
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.services.images import ImageService

log = structlog.get_logger(__name__)

PIECE = 512 * 1024


class ImageExportController:
    def __init__(
        self, compute: ComputeController, images: ImageService, *, max_attempts: int
    ) -> None:
        self.compute = compute
        self.images = images
        self.max_attempts = max_attempts

    def register(self, registry: OperationRegistry) -> None:
        registry.register("image.export", self.export)

    async def export(self, ctx: OperationContext) -> dict[str, Any]:
        image_id = ctx.resource_id or ""
        try:
            return await self._export(ctx, image_id)
        except TemporaryError as exc:
            if ctx.attempt < self.max_attempts:
                raise
            await self._give_up(ctx, image_id, str(exc))
            raise PermanentError(str(exc), "AgentUnavailable") from exc
        except PermanentError as exc:
            await self._give_up(ctx, image_id, str(exc))
            raise

    async def _give_up(self, ctx: OperationContext, image_id: str, reason: str) -> None:
        """The image ends ``error`` with the reason; the agent drops its pin if it can."""
        await self.images.fail(image_id, reason)
        try:
            await self.compute.call(
                str(ctx.input["host_id"]),
                "end_export",
                vm_id=str(ctx.input["vm_id"]),
                export_id=f"export-{image_id}",
            )
        except (TemporaryError, PermanentError):
            log.warning("could not drop the export pin", image_id=image_id)

    async def _export(self, ctx: OperationContext, image_id: str) -> dict[str, Any]:
        vm_id, host_id = str(ctx.input["vm_id"]), str(ctx.input["host_id"])
        export_id = f"export-{image_id}"
        pin = await self.compute.call(
            host_id, "export_disk", vm_id=vm_id, export_id=export_id, slow=4
        )
        size = int(pin["export"]["size_bytes"])
        await ctx.progress(5)

        async def pieces() -> AsyncIterator[bytes]:
            offset, reported = 0, 5
            while offset < size:
                reply = await self.compute.call(
                    host_id,
                    "read_export",
                    vm_id=vm_id,
                    export_id=export_id,
                    offset=offset,
                    length=min(PIECE, size - offset),
                )
                data = base64.b64decode(reply["data"])
                if not data:
                    raise PermanentError(f"the agent sent no data at {offset} of {size}")
                offset += len(data)
                yield data
                percent = 5 + 90 * offset // size
                if percent >= reported + 5:
                    reported = percent
                    await ctx.progress(percent)

        image = await self.images.receive(image_id, pieces())
        if image["size_bytes"] != size or image["format"] != "qcow2":
            raise PermanentError(
                f"export of {vm_id}: got {image['size_bytes']} bytes of {image['format']}, "
                f"the agent announced {size} bytes of qcow2"
            )
        try:
            await self.compute.call(host_id, "end_export", vm_id=vm_id, export_id=export_id)
        except TemporaryError:
            log.warning("could not drop the export pin", host_id=host_id, export_id=export_id)
        return {
            k: image[k]
            for k in (
                "id",
                "state",
                "format",
                "size_bytes",
                "virtual_size_bytes",
                "checksum_sha256",
            )
        } | {"vm_id": vm_id}
