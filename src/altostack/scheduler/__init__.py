"""Placement: which host gets a VM, as pure functions over a snapshot (no I/O, no clock).

``plan(request, hosts, clusters)`` runs a filter chain (state, exclusions, cluster,
architecture, GPUs, hard anti-affinity/affinity, vCPUs/memory with overcommit, disk) over
hosts visited in an order seeded from the request id, scores the first few that fit with
weighers (spread or pack, load, soft group wishes) and returns a ``Plan`` naming the host,
or, when nothing fits, how many hosts failed for which reason. Claiming the capacity in
the database, and re-planning when the claim loses a race, is the caller's job; the
contract is in docs/scheduler.md.
"""

from altostack.scheduler.model import (
    ClusterView,
    GroupView,
    HostView,
    PlacementRequest,
    Plan,
    PlanContext,
)
from altostack.scheduler.planner import Planner, candidate_limit, plan, plan_many
from altostack.scheduler.snapshot import Snapshot, apply_placement

__all__ = [
    "ClusterView",
    "GroupView",
    "HostView",
    "PlacementRequest",
    "Plan",
    "PlanContext",
    "Planner",
    "Snapshot",
    "apply_placement",
    "candidate_limit",
    "plan",
    "plan_many",
]
