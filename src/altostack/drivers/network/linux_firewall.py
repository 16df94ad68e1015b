"""The host's packet filter as data: security groups and anti-spoofing in nftables JSON.

Pure functions (no I/O), so the ruleset is tested as data and applied by the driver with
one ``nft -j -f -`` transaction, which replaces both tables atomically: a change never
opens a window with no filter, and conntrack entries (established flows) survive it.

How a bridged packet is judged on this kind of host (see ENVIRONMENT.md): br_netfilter
passes bridged IPv4 through the ``inet`` hooks *with conntrack*, but there ``iifname`` and
``oifname`` name the bridge, not the port. So:

1. ``bridge alto fwd`` (priority -200, before br_netfilter) sees the real ports. It drops
   frames whose Ethernet, ARP or IPv4 source is not the port's own (a DHCP request from
   0.0.0.0 is let through) and DHCP answers (only the VPC's router serves DHCP), drops
   IPv6 from ports (not supported yet), and writes the
   ports into the packet mark: ingress port index in the high 16 bits, egress port index
   in the low 16 bits. Every port's ingress chain lets DHCP answers in, whatever its groups.
2. ``inet alto pre`` (priority raw) puts each network's traffic in its own conntrack zone,
   so networks with overlapping CIDRs never share connection state.
3. ``inet alto fwd`` accepts established/related traffic, drops invalid traffic of our
   ports, then jumps to the sending port's egress chain (allow → go on, deny or no
   match → drop) and to the receiving port's ingress chain (allow → accept, deny or no
   match → drop). Traffic that touches no port of ours is not judged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from altostack.drivers.network.base import RuleSpec, SecurityGroupSpec

TABLE = "alto"
Json = dict[str, Any]


@dataclass(frozen=True)
class FirewallPort:
    device: str
    index: int
    """The device's ifindex: unique on the host while the device exists, and < 65536."""
    mac: str
    ip: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class FirewallNetwork:
    bridge: str
    zone: int


def conntrack_zone(vni: int) -> int:
    """Conntrack zones are 16-bit; VNIs are 24-bit. Zone 0 is the host's own."""
    return vni % 65535 + 1


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _mark_set(value: Json | int) -> Json:
    return {"mangle": {"key": _meta("mark"), "value": value}}


def _cidr(text: str) -> Json | str:
    net = ipaddress.ip_network(text, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _table(family: str) -> list[Json]:
    """Create-or-empty the table in the same transaction: add, delete, add again."""
    table = {"family": family, "name": TABLE}
    return [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]


def _chain(family: str, name: str, hook: str | None = None, prio: int = 0) -> Json:
    chain: Json = {"family": family, "table": TABLE, "name": name}
    if hook is not None:
        chain.update(type="filter", hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": chain}}


def _rule(family: str, chain: str, *expr: Json) -> Json:
    return {"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def ruleset(
    networks: list[FirewallNetwork],
    ports: list[FirewallPort],
    groups: dict[str, SecurityGroupSpec],
) -> Json:
    """The whole filter of a host, as one ``nft -j`` document."""
    commands: list[Json] = []
    commands += _bridge_table(ports)
    commands += _inet_table(networks, ports, groups)
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def empty_ruleset() -> Json:
    """Both tables gone (no port left to protect)."""
    commands: list[Json] = []
    for family in ("bridge", "inet"):
        commands += _table(family)[:2]
    return {"nftables": commands}


def _bridge_table(ports: list[FirewallPort]) -> list[Json]:
    family = "bridge"
    out = [*_table(family), _chain(family, "fwd", "forward", -200)]
    out.append(_rule(family, "fwd", _mark_set(0)))
    for port in ports:
        iif = _match(_meta("iifname"), port.device)
        ether_type = _payload("ether", "type")
        out += [
            _rule(family, "fwd", iif, _match(_payload("ether", "saddr"), port.mac, "!="), _drop()),
            _rule(
                family,
                "fwd",
                iif,
                _match(ether_type, "arp"),
                _match(_payload("arp", "saddr ether"), port.mac, "!="),
                _drop(),
            ),
            _rule(
                family,
                "fwd",
                iif,
                _match(ether_type, "arp"),
                _match(_payload("arp", "saddr ip"), port.ip, "!="),
                _drop(),
            ),
            # DHCP before the port has its address: let it reach the DHCP server unjudged.
            _rule(
                family,
                "fwd",
                iif,
                _match(ether_type, "ip"),
                _match(_payload("ip", "saddr"), "0.0.0.0"),
                _match(_payload("udp", "sport"), 68),
                _match(_payload("udp", "dport"), 67),
                {"accept": None},
            ),
            _rule(
                family,
                "fwd",
                iif,
                _match(ether_type, "ip"),
                _match(_payload("ip", "saddr"), port.ip, "!="),
                _drop(),
            ),
            # VMs are DHCP clients only: the VPC's router is its one DHCP server.
            _rule(
                family,
                "fwd",
                iif,
                _match(ether_type, "ip"),
                _match(_payload("udp", "sport"), 67),
                _drop(),
            ),
            _rule(family, "fwd", iif, _match(ether_type, "ip6"), _drop()),
            _rule(family, "fwd", iif, _mark_set({"|": [_meta("mark"), port.index << 16]})),
            _rule(
                family,
                "fwd",
                _match(_meta("oifname"), port.device),
                _mark_set({"|": [_meta("mark"), port.index]}),
            ),
        ]
    return out


def _drop() -> Json:
    return {"drop": None}


def _inet_table(
    networks: list[FirewallNetwork],
    ports: list[FirewallPort],
    groups: dict[str, SecurityGroupSpec],
) -> list[Json]:
    family = "inet"
    out = [*_table(family), _chain(family, "pre", "prerouting", -300)]
    for net in networks:
        zone = {"mangle": {"key": {"ct": {"key": "zone"}}, "value": net.zone}}
        out.append(_rule(family, "pre", _match(_meta("iifname"), net.bridge), zone))
    for port in ports:
        out += _port_chains(port, groups)
    out.append(_chain(family, "fwd", "forward", 0))
    ct_state = {"ct": {"key": "state"}}
    out.append(_rule(family, "fwd", _match(ct_state, ["established", "related"], "in"), _accept()))
    if ports:
        ours = _match(_meta("mark"), 0, "!=")
        out.append(_rule(family, "fwd", ours, _match(ct_state, "invalid", "in"), _drop()))
        egress = [[p.index << 16, {"jump": {"target": f"eg_{p.index}"}}] for p in ports]
        ingress = [[p.index, {"jump": {"target": f"in_{p.index}"}}] for p in ports]
        out.append(_rule(family, "fwd", _vmap(0xFFFF0000, egress)))
        out.append(_rule(family, "fwd", _vmap(0x0000FFFF, ingress)))
    return out


def _accept() -> Json:
    return {"accept": None}


def _vmap(mask: int, pairs: list[list[Any]]) -> Json:
    key = {"&": [_meta("mark"), mask]}
    return {"vmap": {"key": key, "data": {"set": pairs}}}


def _port_chains(port: FirewallPort, groups: dict[str, SecurityGroupSpec]) -> list[Json]:
    rules = [rule for gid in port.groups if gid in groups for rule in groups[gid].rules]
    ordered = sorted(rules, key=lambda r: (r.priority, r.action != "deny"))
    out: list[Json] = []
    for direction, chain, allow in (
        ("egress", f"eg_{port.index}", {"return": None}),
        ("ingress", f"in_{port.index}", _accept()),
    ):
        out.append(_chain("inet", chain))
        if direction == "ingress":  # DHCP answers (no VM may send them: see the bridge)
            dhcp = [
                _match(_meta("l4proto"), "udp"),
                _match(_payload("udp", "sport"), 67),
                _match(_payload("udp", "dport"), 68),
            ]
            out.append(_rule("inet", chain, *dhcp, _accept()))
        for rule in ordered:
            if rule.direction != direction:
                continue
            matches = _rule_matches(rule)
            if matches is None:
                continue
            verdict = allow if rule.action == "allow" else _drop()
            out.append(_rule("inet", chain, *matches, verdict))
        out.append(_rule("inet", chain, _drop()))
    return out


def _rule_matches(rule: RuleSpec) -> list[Json] | None:
    """The match expressions of a rule; None for a rule that can match nothing."""
    remote_field = "saddr" if rule.direction == "ingress" else "daddr"
    matches: list[Json] = []
    if rule.protocol == "icmp":
        matches.append(_match(_meta("l4proto"), "icmp"))
    elif rule.protocol in ("tcp", "udp"):
        matches.append(_match(_meta("l4proto"), rule.protocol))
        if rule.port_min is not None and rule.port_max is not None:
            ports: Any = (
                rule.port_min
                if rule.port_min == rule.port_max
                else {"range": [rule.port_min, rule.port_max]}
            )
            matches.append(_match(_payload(rule.protocol, "dport"), ports))
    if rule.remote_cidr is not None:
        net = ipaddress.ip_network(rule.remote_cidr)
        family = "ip" if net.version == 4 else "ip6"
        if net.prefixlen > 0:
            matches.append(_match(_payload(family, remote_field), _cidr(rule.remote_cidr)))
        else:
            matches.append(_match(_meta("nfproto"), "ipv4" if net.version == 4 else "ipv6"))
    if rule.remote_ips is not None:
        v4 = [ip for ip in rule.remote_ips if ipaddress.ip_address(ip).version == 4]
        if not v4:
            return None  # an empty remote group: the rule matches nothing (IPv4 only so far)
        matches.append(_match(_payload("ip", remote_field), {"set": v4}))
    return matches
