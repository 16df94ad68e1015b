"""``alto image``: disk images VMs boot from; import from a URL, upload, download.

Transfers stream in chunks with a byte-counting progress bar, so an image of many GiB
never has to fit in memory. Both directions check SHA-256: an upload sends the checksum
it computed locally (the server keeps nothing that does not match it), and a download
compares what arrived with the image's ``checksum_sha256`` before it takes the file's
name (until then it is written to a hidden ``.part`` file next to it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import httpx
import typer

from altostack.cli.commands.common import LimitOption, YesOption, confirm, settle
from altostack.cli.commands.compute_common import (
    Row,
    WaitTimeoutOption,
    emit_rows,
    human_bytes,
    transfer_progress,
)
from altostack.cli.output import emit_object, note
from altostack.cli.state import CliState, OutputOption, get_state
from altostack.cli.waiting import NoWaitOption, follow_operation
from altostack.client import ApiError, TransportFailure, path_of

app = typer.Typer(help="Images: import from a URL, upload, download, share.")

BASE = "/v1/images"
CHUNK = 1024 * 1024
COLUMNS = [
    "id",
    "name",
    "state",
    "visibility",
    "os",
    "arch",
    "format",
    "size",
    "min_disk",
    "created",
]
SIGNED_BODY_LIMIT = 8 * 1024 * 1024
UPLOAD_TIMEOUT = 300.0  # per read/write; the server verifies the whole file before answering

Visibility = Literal["private", "public", "shared"]
OsFamily = Literal["linux", "windows", "bsd", "other"]
ChecksumOption = Annotated[
    str | None,
    typer.Option(help="Expected SHA-256 (hex); computed from the file when not given"),
]
NoChecksumOption = Annotated[
    bool, typer.Option("--no-checksum", help="Do not compute the SHA-256 before uploading")
]
ShareOption = Annotated[
    list[str] | None,
    typer.Option("--share-with", help="Tenant id to share with (visibility shared); repeat"),
]


def image_row(image: Row) -> Row:
    """An image as a table row: OS and sizes people can read."""
    os_name = " ".join(str(x) for x in (image.get("os_family"), image.get("os_version")) if x)
    return {
        "id": image.get("id"),
        "name": image.get("name"),
        "state": image.get("state"),
        "visibility": image.get("visibility"),
        "os": os_name or None,
        "arch": image.get("arch"),
        "format": image.get("format"),
        "size": human_bytes(image.get("size_bytes")),
        "min_disk": f"{image.get('min_disk_gib')} GiB",
        "created": image.get("created_at"),
    }


def _read_chunks(handle: BinaryIO, on_chunk: Any) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk
        on_chunk(len(chunk))  # after the send, so the bar shows what left the machine


def sha256_of(state: CliState, path: Path) -> str:
    """The file's SHA-256, with a progress bar: reading many GiB takes a while too."""
    digest = hashlib.sha256()
    with transfer_progress(state, transient=True) as progress, path.open("rb") as handle:
        task = progress.add_task(f"sha256 {path.name}", total=path.stat().st_size)
        for chunk in _read_chunks(handle, lambda n: progress.advance(task, n)):
            digest.update(chunk)
    return digest.hexdigest()


def upload_file(
    state: CliState, image_id: str, path: Path, checksum: str | None, *, compute: bool = True
) -> Any:
    """Stream ``path`` into the image; return the image as the server settled it."""
    if checksum is None and compute:
        checksum = sha256_of(state, path)
    client = state.client()
    size = path.stat().st_size
    if client.auth_kind == "api-key" and size > SIGNED_BODY_LIMIT:
        # The signature covers the body's hash, so httpx and the server both buffer it.
        note(
            state,
            "Warning: requests signed with an API key are buffered whole and the server "
            "takes at most 8 MiB of them; log in with `alto login` to stream big images",
        )
    params = {"checksum_sha256": checksum} if checksum else None
    with transfer_progress(state) as progress, path.open("rb") as handle:
        task = progress.add_task(f"upload {path.name}", total=size)
        chunks = _read_chunks(handle, lambda n: progress.advance(task, n))
        response = client.send_content(
            "PUT",
            path_of(BASE, image_id, "file"),
            chunks,
            params=params,
            headers={"Content-Length": str(size)},
            timeout=UPLOAD_TIMEOUT,
        )
    return client.decode(response)


@app.command("list")
def list_(
    ctx: typer.Context,
    state_: Annotated[
        str | None, typer.Option("--state", help="importing, available or error")
    ] = None,
    visibility: Annotated[Visibility | None, typer.Option(help="Only these")] = None,
    name: Annotated[str | None, typer.Option(help="Exactly this name")] = None,
    limit: LimitOption = 100,
    output: OutputOption = None,
) -> None:
    """Images you can use: your own, public ones and those shared with you."""
    state = get_state(ctx, output)
    items = state.client().list_all(
        BASE, state=state_, visibility=visibility, name=name, max_items=limit
    )
    emit_rows(state, items, COLUMNS, title="images", derive=image_row)


@app.command()
def show(ctx: typer.Context, image_id: str, output: OutputOption = None) -> None:
    """One image."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(BASE, image_id)))


@app.command()
def create(
    ctx: typer.Context,
    name: str,
    url: Annotated[
        str | None, typer.Option(help="Import from this http(s) URL (runs as an operation)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="Upload this file"),
    ] = None,
    checksum: ChecksumOption = None,
    no_checksum: NoChecksumOption = False,
    os_family: Annotated[OsFamily | None, typer.Option(help="linux, windows, bsd, other")] = None,
    os_version: Annotated[str | None, typer.Option(help="e.g. 24.04")] = None,
    arch: Annotated[Literal["x86_64", "aarch64"] | None, typer.Option()] = None,
    min_disk: Annotated[int | None, typer.Option(help="Smallest root disk, GiB")] = None,
    visibility: Annotated[Visibility | None, typer.Option(help="private by default")] = None,
    share_with: ShareOption = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Register an image: import it from --url (waits for the import unless --no-wait),
    upload --file, or neither and upload later with `alto image upload`."""
    if url and file:
        raise typer.BadParameter("give --url or --file, not both")
    state = get_state(ctx, output)
    client = state.client()
    body: dict[str, Any] = {"name": name}
    for key, value in (
        ("source_url", url),
        ("os_family", os_family),
        ("os_version", os_version),
        ("arch", arch),
        ("min_disk_gib", min_disk),
        ("visibility", visibility),
        ("shared_with", share_with),
    ):
        if value is not None:
            body[key] = value
    if checksum and not file:
        body["checksum_sha256"] = checksum  # verifies the import (or a later upload)
    response = client.send("POST", BASE, json=body)
    image = client.decode(response)
    op_id = response.headers.get("x-operation-id")
    if op_id:
        answer = {"operation": {"id": op_id, "resource_id": image["id"]}, "image": image}
        follow_operation(
            state,
            answer,
            "image",
            wait=not no_wait,
            timeout=timeout,
            resource_path=path_of(BASE, image["id"]),
        )
    elif file is not None:
        note(state, f"Created {image['id']}; uploading {file}")
        try:
            uploaded = upload_file(state, image["id"], file, checksum, compute=not no_checksum)
        except ApiError:
            note(state, f"{image['id']} keeps no data; remove it: alto image delete {image['id']}")
            raise
        emit_object(state, uploaded)
    else:
        emit_object(state, image)
        note(state, f"Upload its data with: alto image upload {image['id']} FILE")


@app.command()
def upload(
    ctx: typer.Context,
    image_id: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    checksum: ChecksumOption = None,
    no_checksum: NoChecksumOption = False,
    output: OutputOption = None,
) -> None:
    """Upload the data of a new image (qcow2, raw or vmdk; the format is detected)."""
    state = get_state(ctx, output)
    emit_object(state, upload_file(state, image_id, file, checksum, compute=not no_checksum))


@app.command()
def download(
    ctx: typer.Context,
    image_id: str,
    file: Annotated[Path, typer.Argument(help="Where to write it (a directory: ID.FORMAT in it)")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Keep the file even if its SHA-256 differs")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Download an image's data, verifying its SHA-256 against the image's checksum."""
    state = get_state(ctx, output)
    client = state.client()
    image = client.get(path_of(BASE, image_id))
    target = file / f"{image_id}.{image.get('format') or 'img'}" if file.is_dir() else file
    if target.exists() and not force:
        raise typer.BadParameter(f"{target} exists (use --force to overwrite)")
    part = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    received = 0
    try:
        with (
            client.stream("GET", path_of(BASE, image_id, "file")) as response,
            part.open("wb") as out,
            transfer_progress(state) as progress,
        ):
            size = response.headers.get("content-length")
            total = int(size) if size and size.isdigit() else image.get("size_bytes")
            task = progress.add_task(f"download {target.name}", total=total)
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise TransportFailure(f"download of {image_id} broke off: {exc}", attempts=1) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    expected = (image.get("checksum_sha256") or "").lower()
    verified = bool(expected) and digest.hexdigest() == expected
    if expected and not verified and not no_verify:
        part.unlink(missing_ok=True)
        note(
            state,
            f"Error: {image_id} arrived with SHA-256 {digest.hexdigest()}, expected "
            f"{expected}; nothing was kept",
        )
        raise typer.Exit(1)
    part.replace(target)
    emit_object(
        state,
        {
            "id": image_id,
            "path": str(target),
            "size_bytes": received,
            "checksum_sha256": digest.hexdigest(),
            "verified": verified,
        },
    )


@app.command()
def update(
    ctx: typer.Context,
    image_id: str,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    visibility: Annotated[Visibility | None, typer.Option(help="private, public, shared")] = None,
    share_with: ShareOption = None,
    min_disk: Annotated[int | None, typer.Option(help="Smallest root disk, GiB")] = None,
    output: OutputOption = None,
) -> None:
    """Rename, share or publish an image (public: platform admins only)."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {}
    for key, value in (
        ("name", name),
        ("visibility", visibility),
        ("shared_with", share_with),
        ("min_disk_gib", min_disk),
    ):
        if value is not None:
            body[key] = value
    if not body:
        raise typer.BadParameter("nothing to change: give --name, --visibility, ...")
    emit_object(state, state.client().patch(path_of(BASE, image_id), body))


@app.command()
def delete(
    ctx: typer.Context, image_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete an image (refused while a VM uses it)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete image {image_id}?")
    response = state.client().send("DELETE", path_of(BASE, image_id))
    settle(state, response, None, done=f"Deleted {image_id}.")
