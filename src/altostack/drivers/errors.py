"""The typed errors every driver backend raises, sim and real alike.

A backend translates its own failures (a QMP error, a non-zero ``qemu-img`` exit, an RBD
``errno``) into one of these at a single boundary, with ``raise ... from exc`` and the
backend's own message kept, so the agent can report *what* went wrong in words a person can
act on and the controllers can decide *whether a retry may help* (``retryable``).

DriverError                   base; ``message`` is the backend's own words
├── ResourceNotFound          the named object does not exist on this host/pool
│   ├── VmNotFound
│   ├── VolumeNotFound
│   ├── SnapshotNotFound
│   ├── ImageNotFound
│   └── NetworkNotFound
├── InvalidState              the object exists but is in the wrong state for this call
├── InvalidSpec               the request can never succeed as given (e.g. disk < image)
├── NotSupported              this backend cannot do that (see its Capabilities)
├── InsufficientResources     not enough memory/disk/GPUs on this host or pool
├── DriverTimeout             the backend did not answer in time (retryable)
└── BackendFailure            a backend operation failed; the message says why (retryable)

These errors are deliberately *not* domain errors: the agent decides how a driver failure
becomes an operation failure; drivers never speak HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class DriverError(Exception):
    """Base of every driver error; ``message`` keeps the backend's own words."""

    retryable: ClassVar[bool] = False
    """Whether the same call may succeed later without anything else changing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        """A stable name for the bus and the operation record (the class name)."""
        return type(self).__name__

    def details(self) -> dict[str, Any]:
        """Structured fields for status reports; subclasses add theirs."""
        return {}

    def as_dict(self) -> dict[str, Any]:
        """What the agent sends back to the control plane."""
        return {"code": self.code, "message": self.message, "details": self.details()}

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments than ``args``; rebuild from state so
        # errors survive pickle and copy (process pools, test doubles).
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[DriverError], args: tuple[Any, ...], state: dict[str, Any]) -> DriverError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ResourceNotFound(DriverError):
    """The named object does not exist here."""

    kind: ClassVar[str] = "resource"

    def __init__(self, resource_id: str, message: str | None = None) -> None:
        super().__init__(message or f"{self.kind} {resource_id!r} does not exist")
        self.resource_id = resource_id

    def details(self) -> dict[str, Any]:
        return {"resource_id": self.resource_id}


class VmNotFound(ResourceNotFound):
    kind = "VM"


class VolumeNotFound(ResourceNotFound):
    kind = "volume"


class SnapshotNotFound(ResourceNotFound):
    kind = "snapshot"


class ImageNotFound(ResourceNotFound):
    kind = "image"


class NetworkNotFound(ResourceNotFound):
    kind = "network"


class InvalidState(DriverError):
    """The object is in ``current_state``; the call needs it in one of ``wanted``.

    The current state is always named so the control plane can answer "409: the VM is
    running; stop it first" without asking again.
    """

    def __init__(
        self,
        current_state: str,
        wanted: str | Iterable[str],
        *,
        resource_id: str | None = None,
        message: str | None = None,
    ) -> None:
        self.current_state = current_state
        self.wanted: tuple[str, ...] = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        self.resource_id = resource_id
        subject = resource_id or "the resource"
        super().__init__(
            message
            or f"{subject} is {current_state}; this operation needs it {' or '.join(self.wanted)}"
        )

    def details(self) -> dict[str, Any]:
        return {
            "current_state": self.current_state,
            "wanted": list(self.wanted),
            "resource_id": self.resource_id,
        }


class InvalidSpec(DriverError):
    """The request contradicts itself or what exists (a disk smaller than its image)."""


class NotSupported(DriverError):
    """This backend cannot do ``feature``; check its capabilities before asking."""

    def __init__(self, feature: str, message: str | None = None) -> None:
        super().__init__(message or f"{feature} is not supported by this backend")
        self.feature = feature

    def details(self) -> dict[str, Any]:
        return {"feature": self.feature}


class InsufficientResources(DriverError):
    """The host or pool lacks memory, disk or a device; another host may have it."""


class DriverTimeout(DriverError):
    """The backend did not answer in time; its state is unknown until observed again."""

    retryable = True


class BackendFailure(DriverError):
    """A backend operation failed (QEMU refused, ``qemu-img`` exited 1, RBD said EIO)."""

    retryable = True
