"""The nftables document of the linux network driver, checked as data."""

from __future__ import annotations

import json

from altostack.drivers.network.base import RuleSpec, SecurityGroupSpec
from altostack.drivers.network.linux_firewall import (
    FirewallNetwork,
    FirewallPort,
    conntrack_zone,
    ruleset,
)


def _rules(document: dict, family: str, chain: str) -> list[list[dict]]:
    return [
        cmd["add"]["rule"]["expr"]
        for cmd in document["nftables"]
        if "add" in cmd
        and "rule" in cmd["add"]
        and (cmd["add"]["rule"]["family"], cmd["add"]["rule"]["chain"]) == (family, chain)
    ]


def test_port_chains_follow_priority_deny_first_and_end_in_drop() -> None:
    group = SecurityGroupSpec(
        "sg-a",
        (
            RuleSpec("ingress", "tcp", 22, 22, priority=200),
            RuleSpec("ingress", "tcp", 80, 80, action="allow", priority=10),
            RuleSpec("ingress", "any", remote_cidr="10.9.0.0/16", action="deny", priority=10),
            RuleSpec("ingress", "icmp", remote_ips=()),  # empty remote group: matches nothing
        ),
    )
    port = FirewallPort("tapx", 7, "02:00:00:00:00:07", "10.0.0.7", ("sg-a", "sg-unknown"))
    doc = ruleset([FirewallNetwork("albr-9", conntrack_zone(9))], [port], {"sg-a": group})
    dhcp, *chain = _rules(doc, "inet", "in_7")
    assert '"sport"' in json.dumps(dhcp) and dhcp[-1] == {"accept": None}  # DHCP answers
    verdicts = [next(k for k in expr[-1]) for expr in chain]
    assert verdicts == ["drop", "accept", "accept", "drop"]  # deny, :80, :22, default
    assert json.dumps(chain[0]).count("10.9.0.0") == 1
    assert _rules(doc, "inet", "eg_7") == [[{"drop": None}]]  # no egress rule: nothing out


def test_anti_spoofing_and_marks_name_the_real_port() -> None:
    port = FirewallPort("tapx", 7, "02:00:00:00:00:07", "10.0.0.7", ())
    doc = ruleset([], [port], {})
    text = json.dumps(_rules(doc, "bridge", "fwd"))
    for needle in ('"saddr ether"', '"saddr ip"', '"10.0.0.7"', '"02:00:00:00:00:07"', "458752"):
        assert needle in text  # 458752 = 7 << 16, the ingress port in the mark


def test_zones_fit_sixteen_bits_and_avoid_the_host_zone() -> None:
    assert conntrack_zone(1) == 2
    assert 1 <= conntrack_zone(2**24 - 1) <= 65535
