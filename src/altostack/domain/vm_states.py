"""VM states and which actions each allows (API.md):

``pending → starting → running ⇄ stopping → stopped``, ``rebooting``, ``migrating``,
``reinstalling``, ``resizing``, ``deleting → deleted`` (recycle bin), ``error``.
Asking for the state a VM is already in (or moving to) is a no-op success; asking for
something the state forbids is a conflict that names the state.
"""

from __future__ import annotations

TRANSITIONAL = frozenset(
    {
        "pending",
        "starting",
        "stopping",
        "rebooting",
        "migrating",
        "reinstalling",
        "resizing",
        "deleting",
    }
)
STATES = TRANSITIONAL | {"running", "stopped", "deleted", "error"}

# verb → states it may start from
ALLOWED: dict[str, frozenset[str]] = {
    "start": frozenset({"stopped", "error"}),
    "stop": frozenset({"running", "error"}),
    "reboot": frozenset({"running"}),
    "reinstall": frozenset({"stopped", "error"}),
    "resize": frozenset({"running", "stopped"}),
    "reset-password": frozenset({"running"}),
    "console": frozenset({"running"}),
    "delete": frozenset({"running", "stopped", "error", "pending"}),
    "restore": frozenset({"deleted"}),
    "migrate": frozenset({"running", "stopped"}),
}

# verb → states in which it has nothing left to do
NOOP: dict[str, frozenset[str]] = {
    "start": frozenset({"running", "starting"}),
    "stop": frozenset({"stopped", "stopping"}),
    "delete": frozenset({"deleting", "deleted"}),
}

# verb → the transitional state the VM shows while the operation runs
DURING: dict[str, str] = {
    "start": "starting",
    "stop": "stopping",
    "reboot": "rebooting",
    "reinstall": "reinstalling",
    "resize": "resizing",
    "delete": "deleting",
    "migrate": "migrating",
}


def check(verb: str, state: str) -> bool:
    """True when the verb must run, False when it is a no-op; raises ValueError when the
    state forbids it (the caller turns that into a 409 naming the state)."""
    if state in NOOP.get(verb, frozenset()):
        return False
    if state not in ALLOWED[verb]:
        raise ValueError(state)
    return True
