"""FaultInjector, SimTimings and the driver error tree: the sim's shared machinery."""

from __future__ import annotations

import copy
import pickle

import pytest

from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    DriverTimeout,
    ImageNotFound,
    InsufficientResources,
    InvalidState,
    NotSupported,
    ResourceNotFound,
    VmNotFound,
)
from altostack.drivers.faults import OPERATIONS, FaultInjector
from altostack.drivers.timings import SimTimings


def _fails(faults: FaultInjector, operation: str, resource_id: str | None = None) -> bool:
    try:
        faults.check(operation, resource_id)
    except DriverError:
        return True
    return False


def test_a_fault_fires_once_by_default_with_a_backend_failure() -> None:
    faults = FaultInjector()
    faults.inject("start")
    with pytest.raises(BackendFailure, match="injected: start failed"):
        faults.check("start", "vm-1")
    assert not _fails(faults, "start", "vm-1")
    assert faults.fired == [("start", "vm-1")]
    assert faults.pending() == 0


def test_faults_match_operation_and_resource() -> None:
    faults = FaultInjector()
    faults.inject("start", resource_id="vm-1")
    assert not _fails(faults, "stop", "vm-1")
    assert not _fails(faults, "start", "vm-2")
    assert _fails(faults, "start", "vm-1")


def test_times_counts_and_none_means_until_cleared() -> None:
    faults = FaultInjector()
    faults.inject("delete", times=2)
    assert [_fails(faults, "delete") for _ in range(3)] == [True, True, False]
    faults.inject("delete", times=None)
    assert all(_fails(faults, "delete") for _ in range(5))
    assert faults.pending("delete") == 1
    faults.clear()
    assert not _fails(faults, "delete")


def test_rules_fire_in_injection_order_with_their_own_errors() -> None:
    faults = FaultInjector()
    faults.inject("create", error=InsufficientResources("first"))
    faults.inject("create", error=DriverTimeout("second"))
    with pytest.raises(InsufficientResources, match="first"):
        faults.check("create")
    with pytest.raises(DriverTimeout, match="second"):
        faults.check("create")


def test_the_same_error_can_fire_repeatedly() -> None:
    faults = FaultInjector()
    faults.inject("read", times=3, error=BackendFailure("EIO"))
    for _ in range(3):
        with pytest.raises(BackendFailure, match="EIO"):
            faults.check("read")


def test_unknown_operations_and_bad_counts_are_refused() -> None:
    faults = FaultInjector()
    with pytest.raises(ValueError, match="unknown operation"):
        faults.inject("strat")
    with pytest.raises(ValueError):
        faults.inject("start", times=0)
    assert {"create", "start", "create_volume", "ensure_port"} <= OPERATIONS


def test_default_timings_are_realistic_and_instant_is_zero() -> None:
    t = SimTimings()
    assert (t.create, t.start, t.graceful_stop, t.reboot) == (3.0, 1.0, 2.0, 2.0)
    assert all(v == 0 for v in vars(SimTimings.instant()).values())
    assert SimTimings().scaled(0.5).create == 1.5
    with pytest.raises(ValueError):
        SimTimings(start=-1)


def test_invalid_state_names_the_current_and_wanted_states() -> None:
    err = InvalidState("running", ("stopped", "crashed"), resource_id="vm-1")
    assert str(err) == "vm-1 is running; this operation needs it stopped or crashed"
    assert err.as_dict() == {
        "code": "InvalidState",
        "message": str(err),
        "details": {
            "current_state": "running",
            "wanted": ["stopped", "crashed"],
            "resource_id": "vm-1",
        },
    }
    assert not err.retryable


def test_error_tree_and_retryability() -> None:
    assert issubclass(VmNotFound, ResourceNotFound) and issubclass(ImageNotFound, DriverError)
    assert VmNotFound("vm-1").message == "VM 'vm-1' does not exist"
    assert NotSupported("pause").details() == {"feature": "pause"}
    assert BackendFailure.retryable and DriverTimeout.retryable
    assert not InsufficientResources.retryable
    assert BackendFailure("qemu said no").message == "qemu said no"


@pytest.mark.parametrize(
    "error",
    [
        InvalidState("running", "stopped", resource_id="vm-1"),
        VmNotFound("vm-1"),
        NotSupported("pause"),
        BackendFailure("qemu said no"),
    ],
)
def test_errors_survive_pickle_and_copy(error: DriverError) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error)
        assert clone.as_dict() == error.as_dict() and str(clone) == str(error)
