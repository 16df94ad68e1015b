"""``alto vpc``, ``alto subnet``, ``alto sg`` against a fake API."""

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

VPC = {"id": "vpc-1", "name": "main", "cidr": "10.0.0.0/16", "state": "available"}
SUBNET = {"id": "subnet-1", "name": "web", "vpc_id": "vpc-1", "cidr": "10.0.1.0/24"}
GROUP = {"id": "sg-1", "name": "web", "vpc_id": "vpc-1", "is_default": False, "rules": []}


def test_vpc_create_waits_for_its_operation_then_shows_it(api: FakeApi, alto: Any) -> None:  # noqa: F811 (fixtures)
    accepted = {"operation": op(state="pending", progress=0), "vpc": {**VPC, "state": "creating"}}
    api.on("POST /v1/vpcs", ok(accepted, 202, location="/v1/vpcs/vpc-1"))
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/vpcs/vpc-1", ok(VPC))
    api.on("GET /v1/vpcs", page(VPC))
    api.on("DELETE /v1/vpcs/vpc-1", ok({"operation": op(state="pending"), "vpc": VPC}, 202))
    result = alto("-o", "json", "vpc", "create", "main", "--cidr", "10.0.0.0/16")
    assert out_json(result)["state"] == "available"
    assert api.bodies("POST /v1/vpcs") == [{"name": "main", "cidr": "10.0.0.0/16"}]
    assert "vpc-1" in alto("vpc", "list").stdout
    alto("vpc", "delete", "vpc-1", input="n\n", code=1)
    assert not api.to("DELETE /v1/vpcs/vpc-1")
    alto("vpc", "delete", "vpc-1", "--yes", "--no-wait")
    assert len(api.to("DELETE /v1/vpcs/vpc-1")) == 1


def test_subnet_create_sends_what_was_asked(api: FakeApi, alto: Any) -> None:  # noqa: F811 (fixtures)
    api.on("POST /v1/subnets", ok({"operation": op(), "subnet": SUBNET}, 202))
    api.on("GET /v1/subnets", page(SUBNET))
    args = ["--vpc", "vpc-1", "--cidr", "10.0.1.0/24", "--dns", "10.0.0.2", "--no-dhcp"]
    alto("subnet", "create", "web", *args, "--no-wait")
    assert api.bodies("POST /v1/subnets") == [
        {
            "vpc_id": "vpc-1",
            "name": "web",
            "cidr": "10.0.1.0/24",
            "dns_servers": ["10.0.0.2"],
            "dhcp": False,
        }
    ]
    alto("subnet", "list", "--vpc", "vpc-1")
    assert api.to("GET /v1/subnets")[-1].url.params["vpc_id"] == "vpc-1"


def test_security_group_and_rules(api: FakeApi, alto: Any) -> None:  # noqa: F811 (fixtures)
    api.on("POST /v1/security-groups", ok(GROUP, 201))
    api.on("GET /v1/security-groups", page({**GROUP, "rules": [{"id": "sgr-1"}]}))
    api.on("POST /v1/security-groups/sg-1/rules", ok({"id": "sgr-2"}, 201))
    api.on("DELETE /v1/security-groups/sg-1/rules/sgr-2", httpx.Response(204))
    alto("sg", "create", "web", "--vpc", "vpc-1")
    assert api.bodies("POST /v1/security-groups") == [
        {"vpc_id": "vpc-1", "name": "web", "description": None}
    ]
    assert "sg-1" in alto("sg", "list").stdout
    rule = ["--direction", "ingress", "--protocol", "tcp", "--port", "8000-8080"]
    alto("sg", "rule-add", "sg-1", *rule, "--remote-cidr", "10.0.0.0/8")
    assert api.bodies("POST /v1/security-groups/sg-1/rules") == [
        {
            "direction": "ingress",
            "protocol": "tcp",
            "action": "allow",
            "priority": 100,
            "port_min": 8000,
            "port_max": 8080,
            "remote_cidr": "10.0.0.0/8",
        }
    ]
    bad = alto("sg", "rule-add", "sg-1", "--direction", "ingress", "--port", "x-y", code=2)
    assert "not a port" in bad.output
    assert "Deleted rule sgr-2" in alto("sg", "rule-delete", "sg-1", "sgr-2").stderr
