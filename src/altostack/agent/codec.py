"""Turn bus dictionaries into driver values and back (the agent's side of the protocol)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from altostack.drivers.compute.base import HostInfo, NicSpec, VmSpec, VmStats, VmStatus


def spec_from_dict(data: dict[str, Any]) -> VmSpec:
    fields = dict(data)
    fields["nics"] = tuple(NicSpec(**n) for n in fields.get("nics", ()))
    fields["ssh_keys"] = tuple(fields.get("ssh_keys", ()))
    fields["gpus"] = tuple(fields.get("gpus", ()))
    return VmSpec(**fields)


def status_to_dict(status: VmStatus) -> dict[str, Any]:
    out = dataclasses.asdict(status)
    if isinstance(status.started_at, datetime):
        out["started_at"] = status.started_at.isoformat()
    if out.get("console"):
        out["console"].pop("password", None)  # status reports never carry secrets
    return out


def host_info_to_dict(info: HostInfo) -> dict[str, Any]:
    out = dataclasses.asdict(info)
    out["gpus"] = [dataclasses.asdict(g) for g in info.gpus]
    return out


def stats_to_dict(stats: VmStats) -> dict[str, Any]:
    out = dataclasses.asdict(stats)
    out["collected_at"] = stats.collected_at.isoformat()
    out["started_at"] = stats.started_at.isoformat() if stats.started_at else None
    return out
