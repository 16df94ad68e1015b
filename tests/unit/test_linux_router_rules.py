"""The router's pure parts: NAT rules as data, dnsmasq's command line, metadata answers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from altostack.drivers.network import linux_dhcp, linux_metadata, linux_nat
from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    ExternalSpec,
    InstanceMetadata,
    RouterSpec,
    RouterSubnet,
    SnatRule,
)
from altostack.drivers.network.linux_router import spec_from_dict

SPEC = RouterSpec(
    "vpc-1",
    "vpc-1",
    subnets=(
        RouterSubnet("subnet-1", "10.0.1.0/24", "10.0.1.1", dns_servers=("9.9.9.9",)),
        RouterSubnet("subnet-2", "10.0.2.0/24", "10.0.2.1", dhcp=False),
    ),
    external=ExternalSpec("203.0.113.0/24", "203.0.113.1", "203.0.113.10"),
    default_snat=True,
    snat=(SnatRule("10.0.1.0/24", "203.0.113.11"), SnatRule("10.0.1.5/32", "203.0.113.12")),
    eips=(EipBinding("203.0.113.20", "10.0.1.7", 10), EipBinding("203.0.113.21", "10.0.1.8")),
    dnat=(DnatRule("203.0.113.11", "tcp", 2222, "10.0.1.9", 22),),
    dhcp_hosts=(DhcpHost("02:00:00:00:00:07", "10.0.1.7", "web"),),
    instances=(
        InstanceMetadata("10.0.1.7", "vm-1", "web", ("ssh-ed25519 K",), "#!x", "203.0.113.20"),
    ),
)


def _chain(doc: dict[str, Any], chain: str) -> list[str]:
    return [
        json.dumps(c["add"]["rule"]["expr"])
        for c in doc["nftables"]
        if "add" in c and "rule" in c["add"] and c["add"]["rule"]["chain"] == chain
    ]


def test_nat_precedence_eip_then_specific_snat_then_default() -> None:
    post = _chain(linux_nat.ruleset(SPEC), "post")
    sources = ['"10.0.1.7"', '"10.0.1.8"', '"10.0.1.5"', '"10.0.1.0"']
    assert [next(s for s in sources if s in rule) for rule in post[:-1]] == sources
    assert "10.0.2.0" in post[-1] and '"203.0.113.10"' in post[-1]  # the default, last
    pre = _chain(linux_nat.ruleset(SPEC), "pre")
    assert '"dport"' in pre[0] and '"port": 22' in pre[0]  # port mappings before 1:1


def test_without_default_snat_only_nat_sources_leave() -> None:
    spec = RouterSpec("vpc-1", "vpc-1", subnets=SPEC.subnets, external=SPEC.external,
                      eips=SPEC.eips[:1])  # fmt: skip
    fwd = _chain(linux_nat.ruleset(spec), "fwd")
    assert '"set": ["10.0.1.7"]' in fwd[-1]
    assert linux_nat.public_addresses(SPEC) == [
        "203.0.113.11", "203.0.113.12", "203.0.113.20", "203.0.113.21"
    ]  # fmt: skip
    assert linux_nat.rate_limited(SPEC) == [(0x10, "10.0.1.7", 10)]


def test_dnsmasq_serves_reservations_only_on_dhcp_subnets_and_reads_nothing_of_the_host() -> None:
    argv = linux_dhcp.argv(SPEC, linux_dhcp.DhcpFiles(Path("/state/r")))
    text = " ".join(argv)
    for flag in ("--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--interface=int0"):
        assert flag in argv
    assert "10.0.1.0,static" in text and "10.0.2.0" not in text
    assert "option:mtu,1450" in text and "169.254.169.254/32,10.0.1.1" in text
    assert "--server=9.9.9.9" in argv
    assert linux_dhcp.hosts_text(SPEC) == "02:00:00:00:00:07,10.0.1.7,web\n"


def test_metadata_layouts() -> None:
    me = SPEC.instances[0]
    assert linux_metadata.answer(me, "/latest/meta-data/instance-id")[2] == b"vm-1"
    assert linux_metadata.answer(me, "/2009-04-04/meta-data/public-ipv4")[2] == b"203.0.113.20"
    keys = linux_metadata.answer(me, "/latest/meta-data/public-keys/0/openssh-key")
    assert keys[2] == b"ssh-ed25519 K\n"
    assert linux_metadata.answer(me, "/latest/user-data")[2] == b"#!x"
    doc = json.loads(linux_metadata.answer(me, "/openstack/latest/meta_data.json")[2])
    assert (doc["uuid"], doc["hostname"], doc["public_keys"]) == (
        "vm-1", "web", {"key-0": "ssh-ed25519 K"}
    )  # fmt: skip
    assert linux_metadata.answer(None, "/latest/meta-data/instance-id")[0] == 404


def test_stored_specs_round_trip() -> None:
    assert spec_from_dict(json.loads(json.dumps(asdict(SPEC)))) == SPEC


def test_hosts_sharing_a_machine_name_their_routers_apart(tmp_path: Path) -> None:
    """Namespace names are machine-wide: two agents of a lab (each inside its host's
    namespace, so ``netns=None``) must not name -- and delete -- the same router."""
    from altostack.drivers.faults import FaultInjector
    from altostack.drivers.network.linux_router import LinuxRouters

    def routers(netns: str | None, scope: str | None = None) -> LinuxRouters:
        return LinuxRouters(
            state_dir=tmp_path, host_netns=netns, external_bridge=None,
            faults=FaultInjector(), scope=scope,
        )  # fmt: skip

    a, b = routers(None, scope="host-a"), routers(None, scope="host-b")
    assert a.namespace("vpc-1") != b.namespace("vpc-1")
    assert a._legs("vpc-1") != b._legs("vpc-1")
    # The scope defaults to the namespace the driver programs from outside.
    assert routers("host-a").namespace("vpc-1") == a.namespace("vpc-1")
    assert routers(None).namespace("vpc-1") != a.namespace("vpc-1")
