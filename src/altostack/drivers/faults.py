"""Failure injection shared by every driver backend.

Tests (and chaos drills) say "fail the next start of vm-1 on this host" and the backend
raises exactly the error a real failure would raise, at the point a real failure would
happen. Backends call :meth:`FaultInjector.check` once per operation, *after* the
operation has started doing work and *before* it commits, so an injected failure also
exercises the backend's clean-up path. A no-op (starting a running VM) never reaches the
backend, so it never consumes a fault.

A rule may name the ``resource_id`` the operation acts on: the VM for compute operations,
the volume for volume operations and for ``create_snapshot`` / ``rollback``, the snapshot
for ``delete_snapshot``, the image for ``import_image`` / ``delete_image``, the network or
port for network operations.

Operation names are fixed (:data:`OPERATIONS`); an unknown name is rejected at
``inject`` time so a typo cannot turn into a test that silently passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from altostack.drivers.errors import BackendFailure

COMPUTE_OPERATIONS = frozenset(
    {
        "create", "start", "stop", "reboot", "resize", "reinstall", "set_password", "console",
        "pause", "resume", "delete", "attach_disk", "detach_disk", "snapshot_disk",
        "migrate", "prepare_incoming", "export_root_changes", "receive_stopped",
        "snapshot_root", "rollback_root", "delete_root_snapshot",
    }
)  # fmt: skip
STORAGE_OPERATIONS = frozenset(
    {
        "create_volume", "delete_volume", "resize_volume", "create_snapshot", "delete_snapshot",
        "rollback", "import_image", "delete_image", "read", "write", "export_volume",
    }
)  # fmt: skip
NETWORK_OPERATIONS = frozenset(
    {
        "ensure_network",
        "delete_network",
        "ensure_port",
        "delete_port",
        "ensure_security_group",
        "ensure_router",
        "delete_router",
        "delete_security_group",
    }
)
OPERATIONS = COMPUTE_OPERATIONS | STORAGE_OPERATIONS | NETWORK_OPERATIONS


@dataclass
class _Rule:
    operation: str
    resource_id: str | None
    remaining: int | None  # None: until cleared
    error: Exception

    def matches(self, operation: str, resource_id: str | None) -> bool:
        return self.operation == operation and self.resource_id in (None, resource_id)


class FaultInjector:
    """Rules of the form "the next N <operation>s (of <resource>) fail with <error>".

    Rules fire in the order they were injected. One injector may be shared by several
    drivers (a whole sim host) or given to one.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.fired: list[tuple[str, str | None]] = []
        """Every (operation, resource_id) that failed by injection, for assertions."""

    def inject(
        self,
        operation: str,
        *,
        resource_id: str | None = None,
        times: int | None = 1,
        error: Exception | None = None,
    ) -> None:
        """Make the next ``times`` matching operations fail (``None``: until :meth:`clear`).

        ``resource_id`` limits the rule to one VM, volume, snapshot, image, network or port;
        ``error`` defaults to ``BackendFailure("injected: <operation> failed")``.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {sorted(OPERATIONS)}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for 'until cleared')")
        failure = error if error is not None else BackendFailure(f"injected: {operation} failed")
        self._rules.append(_Rule(operation, resource_id, times, failure))

    def check(self, operation: str, resource_id: str | None = None) -> None:
        """Raise the first matching rule's error (consuming one use of it), else return."""
        for rule in self._rules:
            if not rule.matches(operation, resource_id):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
            self.fired.append((operation, resource_id))
            raise rule.error.with_traceback(None)

    def pending(self, operation: str | None = None) -> int:
        """How many rules (optionally for one operation) have not fired out yet."""
        return sum(1 for r in self._rules if operation in (None, r.operation))

    def clear(self) -> None:
        """Forget every rule (the record of fired faults is kept)."""
        self._rules.clear()
