"""How long the sim backends pretend each operation takes.

The defaults are close to what a real host does (a QEMU guest boots in seconds, a graceful
shutdown waits for the guest, a thin clone is instant-ish), so an all-in-one on the sim
feels like a real cloud and the control plane's progress reporting, timeouts and
concurrency get exercised. Unit and contract tests use :meth:`SimTimings.instant`.
A scale run can use ``SimTimings().scaled(0.01)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SimTimings:
    """Per-operation delays in seconds."""

    # compute
    create: float = 3.0
    start: float = 1.0
    graceful_stop: float = 2.0
    force_stop: float = 0.2
    reboot: float = 2.0
    resize: float = 0.5
    reinstall: float = 2.0
    set_password: float = 0.2
    console: float = 0.05
    pause: float = 0.1
    delete: float = 0.5
    attach_disk: float = 0.2
    snapshot_disk: float = 0.02
    migrate: float = 1.0
    # storage
    create_volume: float = 0.5
    clone_volume: float = 0.2
    delete_volume: float = 0.3
    resize_volume: float = 0.2
    create_snapshot: float = 0.3
    delete_snapshot: float = 0.2
    rollback: float = 0.5
    import_image: float = 1.0
    delete_image: float = 0.2
    # network
    ensure_network: float = 0.2
    delete_network: float = 0.1
    ensure_port: float = 0.1
    delete_port: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"SimTimings.{f.name} must not be negative")

    @classmethod
    def instant(cls) -> SimTimings:
        """Every delay zero: what unit and contract tests use."""
        return cls().scaled(0.0)

    def scaled(self, factor: float) -> SimTimings:
        """Every delay multiplied by ``factor`` (0.01 for a fast but ordered scale run)."""
        values = {f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)}
        return SimTimings(**values)
