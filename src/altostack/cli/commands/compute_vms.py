"""``alto vm``, ``alto group``, ``alto recycle-bin``: virtual machines and where they go.

Every VM change is asynchronous on the server (``202 {"operation", "vm"}``). The commands
wait for the operation with a progress bar by default and then print the VM as it ended
up, because "it was accepted" is rarely what a person at a terminal wants to know;
``--no-wait`` returns at once with the operation id. ``operation: null`` means there was
nothing to do (starting a running VM) and is said so, not treated as an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from altostack.cli.commands.common import LimitOption, YesOption, ask, confirm, settle
from altostack.cli.commands.compute_common import (
    Row,
    TagOption,
    WaitTimeoutOption,
    emit_rows,
    human_mib,
    parse_tags,
    wait_all,
)
from altostack.cli.output import emit_object, note
from altostack.cli.state import CliState, OutputFormat, OutputOption, get_state
from altostack.cli.waiting import (
    NoWaitOption,
    follow_operation,
    raise_if_failed,
    wait_with_progress,
)
from altostack.client import OperationFailed, path_of

vms = typer.Typer(
    help="Virtual machines: create, power, resize, reinstall, migrate, delete, restore."
)
groups = typer.Typer(help="Placement groups: keep VMs apart (anti-affinity) or together.")
recycle_bin = typer.Typer(help="Deleted VMs, kept for a while before they are purged.")

BASE = "/v1/vms"
GROUPS = "/v1/placement-groups"
BIN = "/v1/recycle-bin"
IMAGES = "/v1/images"

VM_COLUMNS = ["id", "name", "state", "type", "vcpus", "memory", "host", "ip", "created"]
BIN_COLUMNS = ["id", "name", "type", "host", "deleted", "purge_after"]
GROUP_COLUMNS = ["id", "name", "policy", "mode", "vms", "tenant_id", "created_at"]

VmPassword = Annotated[
    str | None,
    typer.Option("--password", envvar="ALTO_VM_PASSWORD", help="Password of the VM's user"),
]
PasswordPrompt = Annotated[
    bool, typer.Option("--password-prompt", help="Ask for the VM password (twice, hidden)")
]


def vm_row(vm: Row) -> Row:
    """A VM as a table row, with the columns people look for first."""
    return {
        "id": vm.get("id"),
        "name": vm.get("name"),
        "state": vm.get("state"),
        "type": vm.get("instance_type"),
        "vcpus": vm.get("vcpus"),
        "memory": human_mib(vm.get("memory_mib")),
        "host": vm.get("host_id"),
        "ip": vm.get("private_ip"),
        "created": vm.get("created_at"),
    }


def bin_row(vm: Row) -> Row:
    """A deleted VM as a table row: what it was and when it will be gone for good."""
    return {
        "id": vm.get("id"),
        "name": vm.get("name"),
        "type": vm.get("instance_type"),
        "host": vm.get("host_id"),
        "deleted": vm.get("deleted_at"),
        "purge_after": vm.get("purge_after"),
    }


def group_row(group: Row) -> Row:
    """A placement group as a table row; the member count only where the API gave it."""
    members = group.get("vm_ids")
    return {**group, "vms": len(members)} if isinstance(members, list) else dict(group)


def resolve_image(state: CliState, ref: str) -> str:
    """An image id from an id or a name: people say ``ubuntu-24.04``, the API wants ids.

    A name must match exactly one available image, else the user is told to pick an id.
    """
    if ref.startswith("img-"):
        return ref
    found = list(state.client().list_all(IMAGES, name=ref, state="available", max_items=10))
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        raise typer.BadParameter(f"no available image named {ref!r}", param_hint="--image")
    ids = ", ".join(str(i["id"]) for i in found)
    raise typer.BadParameter(f"{len(found)} images are named {ref!r}: {ids}", param_hint="--image")


def resolve_vm(state: CliState, ref: str) -> str:
    """A VM id from an id or a name (names are unique enough in practice; if not, the
    user is told which ids to choose from)."""
    if ref.startswith("vm-"):
        return ref
    found = list(state.client().list_all(BASE, name=ref, max_items=10))
    if not found:  # maybe in the recycle bin (restore, purge)
        found = list(state.client().list_all(BASE, name=ref, state="deleted", max_items=10))
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        raise typer.BadParameter(f"no VM named {ref!r}", param_hint="VM")
    ids = ", ".join(str(v["id"]) for v in found)
    raise typer.BadParameter(f"{len(found)} VMs are named {ref!r}: {ids}", param_hint="VM")


def _password(value: str | None, prompt: bool) -> str | None:
    if prompt and not value:
        return ask(None, "VM password", secret=True, twice=True)
    return value


def _act(
    ctx: typer.Context,
    vm_id: str,
    verb: str,
    body: dict[str, Any] | None,
    *,
    no_wait: bool,
    timeout: float | None,
    output: OutputOption,
) -> Any:
    """Run one VM action (or the delete) and follow its operation."""
    state = get_state(ctx, output)
    client = state.client()
    vm_id = resolve_vm(state, vm_id)
    if verb == "delete":
        response = client.send("DELETE", path_of(BASE, vm_id))
    else:
        response = client.send("POST", path_of(BASE, vm_id, "actions", verb), json=body)
    answer = client.decode(response)
    if answer.get("operation") is None:
        vm = answer.get("vm") or {}
        note(state, f"Nothing to do: VM {vm_id} is already {vm.get('state', 'there')}.")
    return follow_operation(
        state, answer, "vm", wait=not no_wait, timeout=timeout, resource_path=path_of(BASE, vm_id)
    )


# -- VMs -------------------------------------------------------------------------------


@vms.command("list")
def vm_list(
    ctx: typer.Context,
    state_: Annotated[
        str | None,
        typer.Option("--state", help="running, stopped, …; deleted lists the recycle bin"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Exactly this name")] = None,
    host: Annotated[str | None, typer.Option(help="Only on this host (id)")] = None,
    group: Annotated[str | None, typer.Option(help="Only in this placement group (id)")] = None,
    tag: TagOption = None,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    limit: LimitOption = 100,
    output: OutputOption = None,
) -> None:
    """VMs, newest first (without the recycle bin's)."""
    state = get_state(ctx, output)
    tags = [f"{k}={v}" for k, v in parse_tags(tag).items()]
    items = state.client().list_all(
        BASE,
        state=state_,
        name=name,
        host_id=host,
        placement_group_id=group,
        tag=tags or None,
        tenant_id=tenant_id,
        max_items=limit,
    )
    emit_rows(state, items, VM_COLUMNS, title="VMs", derive=vm_row)


@vms.command("show")
def vm_show(ctx: typer.Context, vm_id: str, output: OutputOption = None) -> None:
    """One VM."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(BASE, resolve_vm(state, vm_id))))


@vms.command("create")
def vm_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="VM name (with --count N: NAME-1 … NAME-N)")],
    type_: Annotated[str, typer.Option("--type", help="Instance type name or id, e.g. c1.small")],
    image: Annotated[str, typer.Option(help="Image id or name")],
    disk: Annotated[int | None, typer.Option(min=1, help="Root disk GiB (type minimum)")] = None,
    password: VmPassword = None,
    password_prompt: PasswordPrompt = False,
    ssh_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--ssh-key", exists=True, dir_okay=False, help="Public key file; repeat for more"
        ),
    ] = None,
    user_data: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="cloud-init user data file"),
    ] = None,
    group: Annotated[str | None, typer.Option(help="Placement group id")] = None,
    count: Annotated[int, typer.Option(min=1, max=10, help="How many VMs (1-10)")] = 1,
    tag: TagOption = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create VMs; waits until they run (or fail) unless --no-wait."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {
        "name": name,
        "instance_type": type_,
        "image_id": resolve_image(state, image),
    }
    tags = parse_tags(tag)
    optional: dict[str, Any] = {
        "root_disk_gib": disk,
        "password": _password(password, password_prompt),
        "ssh_keys": [p.read_text().strip() for p in ssh_key or []] or None,
        "user_data": user_data.read_text() if user_data else None,
        "placement_group_id": group,
        "count": count if count != 1 else None,
        "tags": tags or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    client = state.client()
    response = client.send("POST", BASE, json=body)
    answer = client.decode(response)  # raises the API's refusal (quota, capacity, …)
    if "vms" in answer:
        _follow_batch(state, answer, wait=not no_wait, timeout=timeout)
        return
    where = response.headers.get("location") or path_of(BASE, str(answer["vm"]["id"]))
    follow_operation(state, answer, "vm", wait=not no_wait, timeout=timeout, resource_path=where)


def _follow_batch(
    state: CliState, answer: dict[str, Any], *, wait: bool, timeout: float | None
) -> None:
    """``{"operations", "vms"}``: wait for all, print all, fail if any failed."""
    created: list[dict[str, Any]] = answer.get("vms") or []
    op_ids = [str(o["id"]) for o in answer.get("operations") or []]
    if not wait or not op_ids:
        if op_ids:
            note(state, f"Started {', '.join(op_ids)}; follow with: alto ops wait ID")
        emit_rows(state, created, VM_COLUMNS, title="VMs", derive=vm_row)
        return
    finished = wait_all(state, op_ids, timeout)
    client = state.client()
    fresh = [client.get(path_of(BASE, str(vm["id"]))) for vm in created]
    emit_rows(state, fresh, VM_COLUMNS, title="VMs", derive=vm_row)
    failed = [o for o in finished if o.get("state") == "failed"]
    for op in failed[1:]:
        note(state, f"Also failed: {OperationFailed(op)}")
    if failed:
        raise_if_failed(failed[0])


@vms.command("start")
def vm_start(
    ctx: typer.Context,
    vm_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Start a stopped VM."""
    _act(ctx, vm_id, "start", None, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("stop")
def vm_stop(
    ctx: typer.Context,
    vm_id: str,
    force: Annotated[bool, typer.Option("--force", help="Power off without asking the guest")] = (
        False
    ),
    grace: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            max=3600,
            help="Seconds the guest gets to shut down before it is forced (API default 60)",
        ),
    ] = None,
    no_wait: NoWaitOption = False,
    wait_timeout: Annotated[
        float | None,
        typer.Option("--wait-timeout", help="Give up waiting after this many seconds"),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Stop a VM: ACPI shutdown, forced after --timeout seconds (at once with --force)."""
    body: dict[str, Any] = {"force": force}
    if grace is not None:
        body["timeout"] = grace
    _act(ctx, vm_id, "stop", body, no_wait=no_wait, timeout=wait_timeout, output=output)


@vms.command("reboot")
def vm_reboot(
    ctx: typer.Context,
    vm_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Reboot a running VM."""
    _act(ctx, vm_id, "reboot", None, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("reinstall")
def vm_reinstall(
    ctx: typer.Context,
    vm_id: str,
    image: Annotated[
        str | None, typer.Option(help="Image id or name (default: the VM's own)")
    ] = None,
    password: VmPassword = None,
    password_prompt: PasswordPrompt = False,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Replace a stopped VM's root disk with a fresh one from the image; it ends stopped."""
    state = get_state(ctx, output)
    confirm(yes, f"Reinstall VM {vm_id}? Its root disk is replaced.")
    body: dict[str, Any] = {}
    if image:
        body["image_id"] = resolve_image(state, image)
    secret = _password(password, password_prompt)
    if secret:
        body["password"] = secret
    _act(ctx, vm_id, "reinstall", body, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("resize")
def vm_resize(
    ctx: typer.Context,
    vm_id: str,
    type_: Annotated[str, typer.Option("--type", help="New instance type (name or id)")],
    allow_restart: Annotated[
        bool,
        typer.Option("--allow-restart", help="Restart a running VM if it cannot resize live"),
    ] = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Change a VM's instance type (grows live where the host can)."""
    body = {"instance_type": type_, "allow_restart": allow_restart}
    _act(ctx, vm_id, "resize", body, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("migrate")
def vm_migrate(
    ctx: typer.Context,
    vm_id: str,
    host: Annotated[
        str | None, typer.Option("--host", help="Destination host id (default: scheduler)")
    ] = None,
    block_migration: Annotated[
        bool,
        typer.Option(
            "--block-migration",
            help="Copy a running VM's host-local root disk while it runs (needed to move "
            "a running VM whose root disk is local)",
        ),
    ] = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Move a VM to another host (administrators): live when running, cold when stopped."""
    body: dict[str, object] = {"block_migration": block_migration}
    if host:
        body["host_id"] = host
    _act(ctx, vm_id, "migrate", body, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("reset-password")
def vm_reset_password(
    ctx: typer.Context,
    vm_id: str,
    password: VmPassword = None,
    user: Annotated[str | None, typer.Option(help="Guest user (default root)")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Set a guest user's password in a running VM (prompted when not given)."""
    body: dict[str, Any] = {"password": ask(password, "New VM password", secret=True, twice=True)}
    if user:
        body["user"] = user
    _act(ctx, vm_id, "reset-password", body, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("delete")
def vm_delete(
    ctx: typer.Context,
    vm_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Stop the VM and move it to the recycle bin (`alto vm restore` brings it back)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete VM {vm_id}? It goes to the recycle bin.")
    _act(ctx, vm_id, "delete", None, no_wait=no_wait, timeout=timeout, output=output)
    note(state, f"{vm_id} is in the recycle bin: alto vm restore {vm_id} brings it back.")


@vms.command("restore")
def vm_restore(
    ctx: typer.Context,
    vm_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Bring a VM back from the recycle bin (stopped; quota and host room are checked)."""
    _act(ctx, vm_id, "restore", None, no_wait=no_wait, timeout=timeout, output=output)


@vms.command("export-image")
def vm_export_image(
    ctx: typer.Context,
    vm_id: str,
    name: Annotated[str, typer.Argument(help="Name of the new image")],
    os_family: Annotated[
        Literal["linux", "windows", "bsd", "other"] | None,
        typer.Option(help="Default: that of the image the VM was made from"),
    ] = None,
    os_version: Annotated[str | None, typer.Option(help="Default: as the VM's image")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Make an image of a stopped VM's root disk (qcow2; `alto image download` fetches it)."""
    state = get_state(ctx, output)
    client = state.client()
    vm_id = resolve_vm(state, vm_id)
    body: dict[str, Any] = {"name": name}
    if os_family:
        body["os_family"] = os_family
    if os_version:
        body["os_version"] = os_version
    response = client.send("POST", path_of(BASE, vm_id, "actions", "export-image"), json=body)
    follow_operation(state, response, "image", wait=not no_wait, timeout=timeout)


@vms.command("console")
def vm_console(ctx: typer.Context, vm_id: str, output: OutputOption = None) -> None:
    """The VNC console URL of a running VM, to open in a browser (valid 300 s, used once).

    The table output is the full URL alone, so ``xdg-open "$(alto vm console ID)"`` works;
    ``-o json|yaml`` gives the API's answer (token, expiry)."""
    state = get_state(ctx, output)
    client = state.client()
    console = client.post(path_of(BASE, vm_id, "actions", "console"), {})
    url = str(console.get("url") or "")
    full = f"{client.base_url}{url}" if url.startswith("/") else url
    if state.output is OutputFormat.table:
        state.stdout.print(full, soft_wrap=True)
        note(state, f"Valid until {console.get('expires_at')}, for one opening.")
        return
    emit_object(state, console)
    note(state, f"Open: {full}")


@vms.command("console-output")
def vm_console_output(
    ctx: typer.Context,
    vm_id: str,
    lines: Annotated[int, typer.Option(min=1, max=1000, help="How many last lines")] = 50,
    output: OutputOption = None,
) -> None:
    """The tail of the VM's serial console (boot messages, a guest's readiness line)."""
    state = get_state(ctx, output)
    result = state.client().vm_console_output(resolve_vm(state, vm_id), lines)
    if state.output is OutputFormat.table:  # the text as the guest printed it
        typer.echo(str(result.get("output") or ""), nl=False)
        return
    emit_object(state, result)


def stats_view(stats: Row) -> Row:
    """Counters as people read them; JSON and YAML keep the API's raw numbers."""
    disks = stats.get("disks") or []
    nics = stats.get("nics") or []
    return {
        "vm_id": stats.get("vm_id"),
        "host_id": stats.get("host_id"),
        "collected_at": stats.get("collected_at"),
        "started_at": stats.get("started_at"),
        "cpu_seconds": round(int(stats.get("cpu_time_ns") or 0) / 1e9, 2),
        "memory_rss": human_mib(int(stats.get("memory_rss_bytes") or 0) // 1024**2),
        "memory": human_mib(stats.get("memory_mib")),
        "vcpus": stats.get("vcpus"),
        **{
            f"disk {d['name']}": f"read {human_bytes(d['read_bytes'])} ({d['read_ops']} ops), "
            f"written {human_bytes(d['write_bytes'])} ({d['write_ops']} ops)"
            for d in disks
        },
        **{
            f"nic {n['name']}": f"rx {human_bytes(n['rx_bytes'])}, tx {human_bytes(n['tx_bytes'])}"
            for n in nics
        },
    }


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@vms.command("stats")
def vm_stats(ctx: typer.Context, vm_id: str, output: OutputOption = None) -> None:
    """CPU time, memory, disk and network counters of a running VM (since it started)."""
    state = get_state(ctx, output)
    result = state.client().vm_stats(resolve_vm(state, vm_id))
    emit_object(state, stats_view(result) if state.output is OutputFormat.table else result)


# -- placement groups ------------------------------------------------------------------


@groups.command("list")
def group_list(
    ctx: typer.Context,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    output: OutputOption = None,
) -> None:
    """Placement groups."""
    state = get_state(ctx, output)
    items = state.client().list_all(GROUPS, tenant_id=tenant_id)
    emit_rows(state, items, GROUP_COLUMNS, title="placement groups", derive=group_row)


@groups.command("create")
def group_create(
    ctx: typer.Context,
    name: str,
    policy: Annotated[
        Literal["anti-affinity", "affinity"],
        typer.Option(help="anti-affinity: different hosts; affinity: the same host"),
    ],
    mode: Annotated[
        Literal["hard", "soft"],
        typer.Option(help="hard: refuse a VM that cannot comply; soft: best effort"),
    ] = "hard",
    output: OutputOption = None,
) -> None:
    """Create a placement group; give its id to `alto vm create --group`."""
    state = get_state(ctx, output)
    body = {"name": name, "policy": policy, "mode": mode}
    emit_object(state, state.client().post(GROUPS, body))


@groups.command("show")
def group_show(ctx: typer.Context, group_id: str, output: OutputOption = None) -> None:
    """One placement group with its VMs."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(GROUPS, group_id)))


@groups.command("delete")
def group_delete(
    ctx: typer.Context, group_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a placement group."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete placement group {group_id}?")
    response = state.client().send("DELETE", path_of(GROUPS, group_id))
    settle(state, response, None, done=f"Deleted {group_id}.")


# -- recycle bin -----------------------------------------------------------------------


@recycle_bin.command("list")
def bin_list(
    ctx: typer.Context,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    output: OutputOption = None,
) -> None:
    """Deleted VMs and when they will be purged."""
    state = get_state(ctx, output)
    items = state.client().list_all(BIN, tenant_id=tenant_id)
    emit_rows(state, items, BIN_COLUMNS, title="deleted VMs", derive=bin_row)


@recycle_bin.command("purge")
def bin_purge(
    ctx: typer.Context,
    vm_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Destroy a deleted VM and its disk now; this cannot be undone."""
    state = get_state(ctx, output)
    confirm(yes, f"Purge VM {vm_id} and its disk for good?")
    op = state.client().request("DELETE", path_of(BIN, vm_id))
    if no_wait:
        note(state, f"Started {op['id']}; follow it with: alto ops wait {op['id']}")
        emit_object(state, op)
        return
    final = wait_with_progress(state, str(op["id"]), timeout)
    raise_if_failed(final)
    note(state, f"Purged {vm_id}.")
    emit_object(state, final)
