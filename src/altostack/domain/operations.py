"""The operation state machine: what an asynchronous mutation may go through.

``pending`` (written with the spec change) → ``running`` (a worker holds a lease) →
``succeeded`` | ``failed``. A worker that dies leaves ``running`` with an expired lease;
another worker takes it over, so an operation is never lost, only retried.
"""

from __future__ import annotations

from enum import StrEnum


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED)


ALLOWED = {
    OperationState.PENDING: {OperationState.RUNNING, OperationState.FAILED},
    OperationState.RUNNING: {
        OperationState.RUNNING,
        OperationState.PENDING,
        OperationState.SUCCEEDED,
        OperationState.FAILED,
    },
    OperationState.SUCCEEDED: set(),
    OperationState.FAILED: set(),
}


def can_transition(src: OperationState, dst: OperationState) -> bool:
    return dst in ALLOWED[src]


class TemporaryError(Exception):
    """A step failed in a way a retry may fix; the worker retries after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """A step failed for good; the operation ends ``failed`` with this code and message."""

    def __init__(self, message: str, code: str = "OperationFailed") -> None:
        super().__init__(message)
        self.code = code
