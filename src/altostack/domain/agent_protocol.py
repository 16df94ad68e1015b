"""The wire format between controllers and host agents (plain JSON over the bus).

Commands are requests on ``agent.<host_id>``: ``{"action": ..., ...}``; the answer is
``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": {"code", "message",
"details"}}`` where ``code`` names the driver error (``InvalidState``, ``VmNotFound``…).
Every command is idempotent: "ensure this spec (generation N)", "delete this VM".
Agents publish ``hosts.heartbeat`` with what they observe; controllers reconcile.
"""

from __future__ import annotations

from typing import Any

HEARTBEAT_SUBJECT = "hosts.heartbeat"
ACTIONS = frozenset(
    {
        "ensure_vm",
        "start_vm",
        "stop_vm",
        "reboot_vm",
        "resize_vm",
        "reinstall_vm",
        "set_password",
        "console",
        "console_output",
        "vm_stats",
        "delete_vm",
        "get_vm",
        "list_vms",
        "host_info",
        "export_disk",
        "read_export",
        "end_export",
    }
)

TRANSFER_ACTIONS = frozenset(
    {
        "export_root_changes", "read_transfer", "write_transfer", "receive_stopped",
        "drop_transfer", "volume_extents", "read_volume", "write_volume",
    }
)  # fmt: skip
"""Cold migration: a stopped VM's data copied between hosts (``agent.transfer_ops``)."""


LIVE_ACTIONS = frozenset(
    {
        "attach_disk", "detach_disk", "list_disks", "snapshot_disk", "migration_manifest",
        "prepare_incoming", "migrate_vm", "finish_incoming", "abort_incoming",
        "snapshot_root", "rollback_root", "delete_root_snapshot",
    }
)  # fmt: skip
"""Disks, snapshots and live migration (``altostack.agent.live_ops``)."""

DISK_ACTIONS = frozenset(
    {
        "ensure_volume", "delete_volume", "resize_volume", "snapshot_volume",
        "delete_volume_snapshot", "rollback_volume", "attach_volume", "detach_volume",
        "volume_info", "pool_report",
    }
)  # fmt: skip
"""Cloud disks: volumes of the host's pool and their attachments (``agent.disk_ops``)."""


NETWORK_ACTIONS = frozenset({"network_apply", "network_remove", "network_state"})
"""One VPC's desired state on a host (``altostack.agent.network_ops``)."""


def agent_subject(host_id: str) -> str:
    return f"agent.{host_id}"


def command(action: str, **fields: Any) -> dict[str, Any]:
    if (
        action not in ACTIONS
        and action not in LIVE_ACTIONS
        and action not in DISK_ACTIONS
        and action not in NETWORK_ACTIONS
        and action not in TRANSFER_ACTIONS
    ):
        raise ValueError(f"unknown agent action {action!r}")
    return {"action": action, **fields}


# Driver error codes after which retrying the same command cannot help.
PERMANENT_CODES = frozenset(
    {
        "InvalidState",
        "InvalidSpec",
        "NotSupported",
        "InsufficientResources",
        "VmNotFound",
        "ImageNotFound",
        "VolumeNotFound",
    }
)
