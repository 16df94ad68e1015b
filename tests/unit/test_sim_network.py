"""What the sim network backend does beyond the contract: validation, devices, timing."""

from __future__ import annotations

import pytest

from altostack.drivers.errors import InvalidSpec
from altostack.drivers.network.base import NetworkSpec, PortSpec
from altostack.drivers.network.sim import SimDataplane, SimNetworkDriver, tap_name
from altostack.drivers.timings import SimTimings


def test_network_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="vni"):
        NetworkSpec("subnet-1", 0, "10.0.0.0/24", "10.0.0.1")
    with pytest.raises(ValueError, match="gateway"):
        NetworkSpec("subnet-1", 7, "10.0.0.0/24", "10.1.0.1")
    with pytest.raises(ValueError):
        NetworkSpec("subnet-1", 7, "10.0.0.0/33", "10.0.0.1")
    with pytest.raises(ValueError):
        PortSpec("nic-1", "subnet-1", "02:00:00:00:00:01", "not-an-ip")


def test_tap_names_fit_linux_interface_names() -> None:
    assert tap_name("nic-1m85m7d7ta530kah") == tap_name("nic-1m85m7d7ta530kah")
    assert len(tap_name("nic-" + "x" * 40)) <= 15
    # A batch's ids share their time prefix; their names must still differ.
    assert tap_name("nic-1m85m7d7ta530kah") != tap_name("nic-1m85m7d7ta530kai")
    assert tap_name("nic-1m85m7d7ta530kah").startswith("tap")


async def test_the_gateway_address_is_not_a_port_address() -> None:
    d = SimNetworkDriver(timings=SimTimings.instant())
    await d.ensure_network(NetworkSpec("subnet-1", 7, "10.0.0.0/24", "10.0.0.1"))
    with pytest.raises(InvalidSpec, match="gateway"):
        await d.ensure_port(PortSpec("nic-1", "subnet-1", "02:00:00:00:00:01", "10.0.0.1"))


async def test_drivers_over_one_dataplane_share_it() -> None:
    plane = SimDataplane()
    first = SimNetworkDriver(plane, timings=SimTimings.instant())
    second = SimNetworkDriver(plane, timings=SimTimings.instant())
    await first.ensure_network(NetworkSpec("subnet-1", 7, "10.0.0.0/24", "10.0.0.1"))
    with pytest.raises(InvalidSpec, match="vni 7"):
        await second.ensure_network(NetworkSpec("subnet-2", 7, "10.1.0.0/24", "10.1.0.1"))


async def test_operations_take_their_configured_time_and_no_ops_none() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    d = SimNetworkDriver(sleep=sleep)
    net = NetworkSpec("subnet-1", 7, "10.0.0.0/24", "10.0.0.1")
    port = PortSpec("nic-1", "subnet-1", "02:00:00:00:00:01", "10.0.0.5")
    await d.ensure_network(net)
    await d.ensure_network(net)  # no-op: no backend work
    await d.ensure_port(port)
    await d.ensure_port(port)
    await d.delete_port(port.id)
    await d.delete_network(net.id)
    t = SimTimings()
    assert delays == [t.ensure_network, t.ensure_port, t.delete_port, t.delete_network]
