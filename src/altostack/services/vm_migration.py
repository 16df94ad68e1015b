"""Moving a VM to another host (admin): the rules checked before anything moves.

A running VM moves live; a stopped one moves cold (its disks copied, it stays stopped).
Where its disks are decides what is possible: a disk on a shared pool (Ceph) is reached
from every host, so nothing of it is copied; a disk on host-local storage (the QEMU root
disk, a ``local`` pool's volume) must be copied. A cold migration copies local disks; a
live migration copies only the root disk, and only when asked (``block_migration``: the
copy runs while the guest writes, which costs I/O and time, so the admin chooses it),
and refuses VMs with local data disks attached (detach them, or move the VM stopped).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from altostack.db.models_compute import Host, Vm
from altostack.db.models_storage import Disk, Snapshot, StoragePool
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, PermissionDenied
from altostack.services.context import RequestContext
from altostack.services.placement import PlacementService


async def prepare_migration(
    uow: UnitOfWork,
    ctx: RequestContext,
    vm: Vm,
    args: dict[str, Any],
    placement: PlacementService,
) -> dict[str, Any]:
    """Check the move, claim room on the destination; the operation's input."""
    if not ctx.principal.is_platform_admin:
        raise PermissionDenied(
            "moving VMs between hosts is for platform administrators only",
            extra={"permission": "vm:migrate"},
        )
    target = args.get("host_id")
    if target is not None and not isinstance(target, str):
        raise InvalidRequest.for_field("host_id", "must be a host id")
    block = args.get("block_migration", False)
    if not isinstance(block, bool):
        raise InvalidRequest.for_field("block_migration", "must be true or false")
    live = vm.state == "running"
    if vm.gpus:
        raise Conflict(
            f"VM {vm.id} has {vm.gpus} GPU(s) passed through: it cannot leave its host",
            extra={"current_state": vm.state},
        )
    source = await uow.session.get(Host, vm.host_id) if vm.host_id else None
    if source is None:
        raise Conflict(f"VM {vm.id} has no host to move from", extra={"current_state": vm.state})
    local_disks = await _local_data_disks(uow, vm.id)
    snaps = list(await uow.session.scalars(select(Snapshot.id).where(Snapshot.vm_id == vm.id)))
    if snaps:
        raise Conflict(
            f"VM {vm.id}'s root disk has snapshots ({', '.join(snaps)}), kept inside it on "
            f"host {source.id}; a move does not carry them: delete them first",
            extra={"current_state": vm.state, "snapshot_ids": snaps},
        )
    if live:
        need = "block_migration" if block else "live_migration"
        if not source.capabilities.get(need):
            raise Conflict(
                f"host {source.id} cannot move a running VM ({need} unsupported); stop the VM "
                "for a cold migration",
                extra={"current_state": vm.state},
            )
        if not block:
            raise Conflict(
                f"VM {vm.id} has its root disk on host {source.id}'s local storage: a live "
                "migration must copy it while the guest runs; pass block_migration=true, or "
                "stop the VM for a cold migration",
                extra={"current_state": vm.state, "local_disks": ["root"]},
            )
        if local_disks:
            names = [d.id for d in local_disks]
            raise Conflict(
                f"VM {vm.id} has data disks on host-local storage ({', '.join(names)}): a "
                "live migration does not copy them; detach them, or stop the VM for a cold "
                "migration (which moves them)",
                extra={"current_state": vm.state, "local_disks": names},
            )
    else:
        if not source.capabilities.get("cold_migration"):
            raise Conflict(
                f"host {source.id} cannot hand over a stopped VM (cold_migration unsupported)",
                extra={"current_state": vm.state},
            )
        with_snapshots = [d.id for d in local_disks if d.snapshot_count]
        if with_snapshots:
            raise Conflict(
                f"local data disks {', '.join(with_snapshots)} have snapshots, which stay in "
                f"host {source.id}'s pool; delete them before moving the VM",
                extra={"current_state": vm.state, "local_disks": with_snapshots},
            )
    claim = await placement.claim_elsewhere(uow, vm, target=target, same_cluster=live)
    destination = await uow.session.get(Host, claim.host_id)
    need = ("block_migration" if block else "live_migration") if live else "cold_migration"
    if destination is None or not destination.capabilities.get(need):
        raise Conflict(
            f"host {claim.host_id} cannot receive the VM ({need} unsupported)",
            extra={"host_id": claim.host_id},
        )
    return {
        "mode": "live" if live else "cold",
        "block_migration": block,
        "source_host_id": source.id,
        "target_host_id": claim.host_id,
        "claim": {
            "vcpus": claim.vcpus,
            "memory_mib": claim.memory_mib,
            "disk_gib": claim.disk_gib,
        },
        "previous_state": vm.state,
        "local_disks": [d.id for d in local_disks],
    }


async def _local_data_disks(uow: UnitOfWork, vm_id: str) -> list[Disk]:
    rows = await uow.session.execute(
        select(Disk)
        .join(StoragePool, StoragePool.id == Disk.pool_id)
        .where(Disk.vm_id == vm_id, StoragePool.shared.is_(False))
        .order_by(Disk.id)
    )
    return list(rows.scalars())
