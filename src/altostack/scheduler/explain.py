"""Sentences a person reads when a placement succeeds or fails.

The failure sentence is the product here: "no host fits 4 vCPU / 8192 MiB / 40 GiB: 5 hosts
checked: 3 short of memory, 2 in maintenance" tells an operator whether to add hosts, end a
maintenance or shrink the VM, without reading any logs.
"""

from __future__ import annotations

from collections.abc import Mapping

from altostack.scheduler.model import PlacementRequest


def describe(request: PlacementRequest) -> str:
    text = f"{request.vcpus} vCPU / {request.memory_mib} MiB / {request.disk_gib} GiB"
    if request.gpus:
        text += f" / {request.gpus} GPU"
    where: list[str] = []
    if request.arch is not None:
        where.append(request.arch)
    if request.cluster_id is not None:
        where.append(f"cluster {request.cluster_id}")
    if request.group is not None:
        group = request.group
        where.append(f"{group.mode} {group.policy} group {group.id}")
    return f"{text} ({', '.join(where)})" if where else text


def summarize(rejections: Mapping[str, int]) -> str:
    """Largest count first: the first reason named is the one worth acting on."""
    ranked = sorted(rejections.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {reason}" for reason, count in ranked)


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


def no_fit(request: PlacementRequest, checked: int, rejections: Mapping[str, int]) -> str:
    head = f"no host fits {describe(request)}"
    if checked == 0:
        return f"{head}: no hosts"
    return f"{head}: {_hosts(checked)} checked: {summarize(rejections)}"


def placed(
    host_id: str, score: float, checked: int, candidates: int, rejections: Mapping[str, int]
) -> str:
    text = f"placed on {host_id} (score {score:.3f}): {candidates} of {_hosts(checked)} checked fit"
    return f"{text}; rejected {summarize(rejections)}" if rejections else text
