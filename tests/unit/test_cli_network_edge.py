"""``alto nic``, ``alto eip``, ``alto ip-pool``, ``alto natgw`` against a fake API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.unit.test_cli_compute import (  # noqa: F401  (fixtures)
    FakeApi,
    alto,
    api,
    isolated,
    ok,
    op,
    out_json,
    page,
)

NIC = {"id": "nic-1", "private_ip": "10.0.1.9", "mac": "02:00:00:00:00:01", "subnet_id": "s",
       "vm_id": None, "primary": False, "state": "unbound"}  # fmt: skip
EIP = {"id": "eip-1", "address": "203.0.113.5", "state": "unbound", "nic_id": None,
       "nat_gateway_id": None, "bandwidth_mbps": None}  # fmt: skip
NAT = {"id": "nat-1", "name": "gw", "vpc_id": "vpc-1", "public_ip": None, "state": "available",
       "snat_rules": [], "dnat_rules": []}  # fmt: skip


def test_nic_create_attach_waits_and_rereads(api: FakeApi, alto: Any) -> None:  # noqa: F811
    api.on("POST /v1/nics", ok(NIC, 201))
    bound = {**NIC, "vm_id": "vm-1", "state": "bound"}
    api.on("POST /v1/nics/nic-1/actions/attach", ok({"operation": op(), "nic": bound}, 202))
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/nics/nic-1", ok(bound))
    api.on("GET /v1/nics", page(NIC))
    alto("nic", "create", "--subnet", "s", "--ip", "10.0.1.9", "--sg", "sg-1")
    assert api.bodies("POST /v1/nics") == [
        {"subnet_id": "s", "security_group_ids": ["sg-1"], "private_ip": "10.0.1.9"}
    ]
    result = alto("-o", "json", "nic", "attach", "nic-1", "--vm", "vm-1")
    assert out_json(result)["state"] == "bound"
    assert api.bodies("POST /v1/nics/nic-1/actions/attach") == [{"vm_id": "vm-1"}]
    api.on("PATCH /v1/nics/nic-1", ok(bound))
    alto("nic", "set-groups", "nic-1", "--sg", "sg-2")
    assert api.bodies("PATCH /v1/nics/nic-1") == [{"security_group_ids": ["sg-2"]}]
    alto("nic", "list", "--vm", "vm-1")
    assert api.to("GET /v1/nics")[-1].url.params["vm_id"] == "vm-1"


def test_eip_bind_needs_one_target(api: FakeApi, alto: Any) -> None:  # noqa: F811
    api.on("POST /v1/eips", ok({"operation": op(), "eip": EIP}, 202))
    api.on("POST /v1/eips/eip-1/actions/bind", ok({"operation": op(), "eip": EIP}, 202))
    api.on("DELETE /v1/eips/eip-1", httpx.Response(204))
    alto("eip", "allocate", "--bandwidth", "10", "--no-wait")
    assert api.bodies("POST /v1/eips") == [{"bandwidth_mbps": 10}]
    alto("eip", "bind", "eip-1", "--vm", "vm-1", "--nic", "nic-1", code=2)
    alto("eip", "bind", "eip-1", "--natgw", "nat-1", "--no-wait")
    assert api.bodies("POST /v1/eips/eip-1/actions/bind") == [{"nat_gateway_id": "nat-1"}]
    assert "Released eip-1" in alto("eip", "release", "eip-1", "--yes").stderr


def test_natgw_rules(api: FakeApi, alto: Any) -> None:  # noqa: F811
    api.on("GET /v1/nat-gateways", page(NAT))
    api.on("POST /v1/nat-gateways/nat-1/dnat-rules", ok({"id": "natr-1"}, 201))
    api.on("POST /v1/nat-gateways/nat-1/snat-rules", ok({"id": "natr-2"}, 201))
    assert "nat-1" in alto("natgw", "list").stdout
    alto("natgw", "dnat-add", "nat-1", "--public-port", "8080", "--vm", "vm-1",
         "--private-port", "80")  # fmt: skip
    assert api.bodies("POST /v1/nat-gateways/nat-1/dnat-rules") == [
        {"protocol": "tcp", "public_port": 8080, "vm_id": "vm-1", "private_port": 80}
    ]
    alto("natgw", "snat-add", "nat-1", code=2)
    alto("natgw", "snat-add", "nat-1", "--subnet", "subnet-1")
    assert api.bodies("POST /v1/nat-gateways/nat-1/snat-rules") == [
        {"subnet_id": "subnet-1", "vm_id": None}
    ]
