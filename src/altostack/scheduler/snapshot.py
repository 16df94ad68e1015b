"""An in-memory copy of the hosts that a scheduler keeps current between database reads.

A plan is a pure function of the hosts it is given, so the cheapest speed-up is to give it
fewer: a request pinned to a cluster (or an architecture) is planned over that cluster's
hosts only, as the database query for it would return. ``apply`` records a placement so
the next plan sees it without a round trip; a refresh from the database (the authority)
simply builds a new ``Snapshot``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from altostack.scheduler.model import HostView, PlacementRequest


def apply_placement(host: HostView, request: PlacementRequest) -> HostView:
    """The host as it will be once the VM is on it: usage added, group recorded."""
    group = request.group
    groups = host.groups
    if group is not None and group.id not in groups:
        groups = groups | {group.id}
    return HostView(
        host.id,
        host.cluster_id,
        host.arch,
        host.state,
        host.vcpus,
        host.memory_mib,
        host.disk_gib,
        host.vcpus_used + request.vcpus,
        host.memory_mib_used + request.memory_mib,
        host.disk_gib_used + request.disk_gib,
        host.gpus_total,
        host.gpus_used + request.gpus,
        host.cpu_ratio,
        host.ram_ratio,
        host.load,
        groups,
    )


class Snapshot:
    """Host views indexed by id, cluster and architecture. Not thread-safe: one per planner."""

    def __init__(self, hosts: Iterable[HostView]) -> None:
        self.hosts: list[HostView] = list(hosts)
        self._by_cluster: dict[str, list[HostView]] = {}
        self._by_arch: dict[str, list[HostView]] = {}
        # id -> every (list, position) that holds the host, so ``apply`` updates them all.
        self._slots: dict[str, list[tuple[list[HostView], int]]] = {}
        for i, host in enumerate(self.hosts):
            if host.id in self._slots:
                raise ValueError(f"host {host.id} appears twice")
            by_cluster = self._by_cluster.setdefault(host.cluster_id, [])
            by_arch = self._by_arch.setdefault(host.arch, [])
            self._slots[host.id] = [
                (self.hosts, i),
                (by_cluster, len(by_cluster)),
                (by_arch, len(by_arch)),
            ]
            by_cluster.append(host)
            by_arch.append(host)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, host_id: str) -> HostView:
        slots = self._slots[host_id]
        array, position = slots[0]
        return array[position]

    def hosts_for(self, request: PlacementRequest) -> Sequence[HostView]:
        """The hosts the request may land on as far as cluster and architecture go.

        The others would only be rejected, so leaving them out changes which hosts the
        plan visits and counts, never which hosts can fit. The candidate limit then follows
        the size of the cluster the request may land in, as in Nomad. An affinity group gets
        every host, because the plan must see where the group's members already are.
        """
        if request.group is not None and request.group.policy == "affinity":
            return self.hosts
        if request.cluster_id is not None:
            return self._by_cluster.get(request.cluster_id, [])
        if request.arch is not None:
            return self._by_arch.get(request.arch, [])
        return self.hosts

    def apply(self, host_id: str, request: PlacementRequest) -> HostView:
        """Record that ``request`` now runs on ``host_id``; returns the updated view."""
        slots = self._slots[host_id]
        array, position = slots[0]
        updated = apply_placement(array[position], request)
        for array, position in slots:
            array[position] = updated
        return updated
