"""Base images for an agent in its own process: downloaded from the image service.

The agent reads the image's record (``checksum_sha256``, ``format``) and streams
``GET /v1/images/{id}/file`` with the SDK and the usual credentials (``ALTO_URL`` is the
join URL; ``ALTO_TOKEN`` or an API key of a platform administrator, who can read every
tenant's images). The cache (:class:`~altostack.drivers.compute.local_images.
LocalImageCache`) verifies the SHA-256 before the file is used, once per host.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from altostack.client import AsyncClient, NotFound
from altostack.drivers.compute.local_images import FetchedImage
from altostack.drivers.errors import BackendFailure, ImageNotFound


class HttpImageSource:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, image_id: str, target: Path) -> FetchedImage:
        try:
            image = await self.client.get(f"/v1/images/{image_id}")
            async with (
                self.client.stream("GET", f"/v1/images/{image_id}/file", timeout=600) as r,
                await anyio.open_file(target, "wb") as fh,
            ):
                async for chunk in r.aiter_bytes(1024 * 1024):
                    await fh.write(chunk)
        except NotFound as exc:
            raise ImageNotFound(image_id, f"the image service has no image {image_id}") from exc
        except Exception as exc:  # the SDK's errors, transport failures: retry later
            raise BackendFailure(f"downloading image {image_id} failed: {exc}") from exc
        if not image.get("checksum_sha256"):
            raise BackendFailure(f"image {image_id} has no checksum yet ({image.get('state')})")
        return FetchedImage(str(image["checksum_sha256"]), str(image.get("format") or "raw"))
