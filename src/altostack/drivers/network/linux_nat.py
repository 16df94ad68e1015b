"""A VPC router's packet rules as data: NAT, what may cross the router, EIP traffic classes.

Pure functions (no I/O): the router applies the result with one ``nft -j -f -`` inside its
namespace, which replaces the table atomically. Conntrack entries are not part of the
table, so established connections keep their translation across a change (a flow is NATed
once, at its first packet) and an agent restart that re-applies the same rules is
invisible to them.

Legs: ``int0`` (the VPC bridge, every subnet's gateway) and ``ext0`` (the external
network). NAT precedence is the one :class:`RouterSpec` promises: an EIP's 1:1 mapping,
then the most specific ``snat`` rule, then ``default_snat`` through the router's own
external address; traffic none of them covers does not leave. From outside, only what a
DNAT (an EIP or a port mapping) lets in reaches the VPC, and the router itself answers
only ICMP and replies there.

Bandwidth: the forward chain writes an EIP's traffic class into ``meta priority`` (the
HTB class the :mod:`linux_router` tc setup made on each leg); setting it in *forward*
matters, because the kernel overwrites the priority from the TOS before forwarding.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from altostack.drivers.network.base import RouterSpec

TABLE = "alto_router"
INTERNAL = "int0"
EXTERNAL = "ext0"
Json = dict[str, Any]
_FAMILY = "ip"


def eip_class(position: int) -> int:
    """The HTB minor number of the ``position``-th rate-limited EIP (1: is the root)."""
    return 0x10 + position


def rate_limited(spec: RouterSpec) -> list[tuple[int, str, int]]:
    """``(class minor, private ip, mbps)`` for each EIP with a bandwidth limit."""
    limited = [e for e in spec.eips if e.bandwidth_mbps is not None]
    ordered = sorted(limited, key=lambda e: e.public_ip)
    return [(eip_class(n), e.private_ip, e.bandwidth_mbps or 0) for n, e in enumerate(ordered)]


def public_addresses(spec: RouterSpec) -> list[str]:
    """Addresses the external leg carries as /32s besides ``router_ip`` (it answers ARP)."""
    if spec.external is None:
        return []
    found = {e.public_ip for e in spec.eips}
    found |= {r.public_ip for r in spec.snat} | {d.public_ip for d in spec.dnat}
    found.discard(spec.external.router_ip)
    return sorted(found, key=ipaddress.ip_address)


def ruleset(spec: RouterSpec) -> Json:
    """The router namespace's whole table, as one ``nft -j`` document."""
    table = {"family": _FAMILY, "name": TABLE}
    commands: list[Json] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        _chain("pre", "nat", "prerouting", -100, "accept"),
        _chain("post", "nat", "postrouting", 100, "accept"),
        _chain("fwd", "filter", "forward", 0, "drop"),
        _chain("in", "filter", "input", 0, "accept"),
    ]
    commands += _dnat(spec) + _snat(spec) + _forward(spec) + _input()
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def empty_ruleset() -> Json:
    table = {"family": _FAMILY, "name": TABLE}
    return {"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]}


def _chain(name: str, kind: str, hook: str, prio: int, policy: str) -> Json:
    chain: Json = {"family": _FAMILY, "table": TABLE, "name": name}
    chain.update(type=kind, hook=hook, prio=prio, policy=policy)
    return {"add": {"chain": chain}}


def _rule(chain: str, *expr: Json) -> Json:
    rule = {"family": _FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}
    return {"add": {"rule": rule}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _ip(field: str) -> Json:
    return {"payload": {"protocol": "ip", "field": field}}


def _net(cidr: str) -> Json | str:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _iif(name: str) -> Json:
    return _match(_meta("iifname"), name)


def _oif(name: str) -> Json:
    return _match(_meta("oifname"), name)


def _dnat(spec: RouterSpec) -> list[Json]:
    out: list[Json] = []
    for rule in spec.dnat:  # port mappings first: they are narrower than a 1:1 EIP
        out.append(
            _rule(
                "pre",
                _iif(EXTERNAL),
                _match(_ip("daddr"), rule.public_ip),
                _match(
                    {"payload": {"protocol": rule.protocol, "field": "dport"}}, rule.public_port
                ),
                {"dnat": {"addr": rule.private_ip, "port": rule.private_port}},
            )
        )
    for eip in spec.eips:
        out.append(
            _rule(
                "pre",
                _iif(EXTERNAL),
                _match(_ip("daddr"), eip.public_ip),
                {"dnat": {"addr": eip.private_ip}},
            )
        )
    return out


def _snat(spec: RouterSpec) -> list[Json]:
    if spec.external is None:
        return []
    out = [
        _rule(
            "post",
            _oif(EXTERNAL),
            _match(_ip("saddr"), e.private_ip),
            {"snat": {"addr": e.public_ip}},
        )
        for e in spec.eips
    ]
    out += [
        _rule(
            "post",
            _oif(EXTERNAL),
            _match(_ip("saddr"), _net(r.source_cidr)),
            {"snat": {"addr": r.public_ip}},
        )
        for r in spec.snat  # most specific first (RouterSpec keeps them sorted)
    ]
    if spec.default_snat:
        inside = [_match(_ip("saddr"), {"set": [_net(s.cidr) for s in spec.subnets]})]
        snat = {"snat": {"addr": spec.external.router_ip}}
        out.append(_rule("post", _oif(EXTERNAL), *(inside if spec.subnets else []), snat))
    return out


def _forward(spec: RouterSpec) -> list[Json]:
    ct_state = {"ct": {"key": "state"}}
    out: list[Json] = []
    for minor, private_ip, _mbps in rate_limited(spec):
        klass = f"1:{minor:x}"
        priority = {"mangle": {"key": _meta("priority"), "value": klass}}
        out.append(
            _rule("fwd", _iif(INTERNAL), _oif(EXTERNAL), _match(_ip("saddr"), private_ip), priority)
        )
        out.append(
            _rule("fwd", _iif(EXTERNAL), _oif(INTERNAL), _match(_ip("daddr"), private_ip), priority)
        )
    out += [
        _rule("fwd", _match(ct_state, ["established", "related"], "in"), {"accept": None}),
        _rule("fwd", _match(ct_state, "invalid", "in"), {"drop": None}),
        _rule("fwd", _iif(INTERNAL), _oif(INTERNAL), {"accept": None}),  # between subnets
        _rule(
            "fwd",
            _iif(EXTERNAL),
            _oif(INTERNAL),
            _match({"ct": {"key": "status"}}, "dnat", "in"),
            {"accept": None},
        ),
    ]
    if spec.external is None:
        return out
    if spec.default_snat:
        out.append(_rule("fwd", _iif(INTERNAL), _oif(EXTERNAL), {"accept": None}))
        return out
    sources = [e.private_ip for e in spec.eips] + [_net(r.source_cidr) for r in spec.snat]
    if sources:
        out.append(
            _rule(
                "fwd",
                _iif(INTERNAL),
                _oif(EXTERNAL),
                _match(_ip("saddr"), {"set": sources}),
                {"accept": None},
            )
        )
    return out


def _input() -> list[Json]:
    ct_state = {"ct": {"key": "state"}}
    return [
        _rule(
            "in",
            _iif(EXTERNAL),
            _match(ct_state, ["established", "related"], "in"),
            {"accept": None},
        ),
        _rule("in", _iif(EXTERNAL), _match(_meta("l4proto"), "icmp"), {"accept": None}),
        _rule("in", _iif(EXTERNAL), {"drop": None}),
    ]
