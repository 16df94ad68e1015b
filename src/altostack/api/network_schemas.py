"""Request and response bodies of the virtual network API (API.md: network)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from altostack.api.compute_schemas import Strict
from altostack.api.schemas import OperationOut


class VpcCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    cidr: str = Field(max_length=64, description="IPv4, /8 to /28, e.g. 10.0.0.0/16")


class VpcOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    cidr: str
    state: str
    generation: int | None = Field(None, description="bumped by every change hosts must see")
    observed_generation: int | None = Field(
        None, description="the newest generation every host of the VPC has applied"
    )
    created_at: datetime


class VpcAccepted(BaseModel):
    operation: OperationOut
    vpc: VpcOut


class SubnetCreate(Strict):
    vpc_id: str = Field(max_length=40)
    name: str = Field(min_length=1, max_length=64)
    cidr: str = Field(max_length=64, description="inside the VPC's CIDR, /8 to /28")
    gateway_ip: str | None = Field(None, max_length=64, description="default: first address")
    dns_servers: list[str] = Field([], max_length=4)
    dhcp: bool = True
    ipv6_prefix: str | None = Field(None, max_length=64, description="an IPv6 /64")


class SubnetOut(BaseModel):
    id: str
    tenant_id: str
    vpc_id: str
    name: str
    cidr: str
    gateway_ip: str
    dns_servers: list[str]
    dhcp: bool
    ipv6_prefix: str | None
    state: str
    created_at: datetime
    total_ips: int
    available_ips: int | None = None


class SubnetAccepted(BaseModel):
    operation: OperationOut
    subnet: SubnetOut


class SecurityGroupCreate(Strict):
    vpc_id: str = Field(max_length=40)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(None, max_length=255)


class RuleCreate(Strict):
    direction: Literal["ingress", "egress"]
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int | None = Field(None, ge=1, le=65535)
    port_max: int | None = Field(None, ge=1, le=65535)
    remote_cidr: str | None = Field(None, max_length=64, description="default: anywhere")
    remote_group_id: str | None = Field(None, max_length=40, description="a group of the VPC")
    action: Literal["allow", "deny"] = "allow"
    priority: int = Field(100, ge=1, le=1000, description="lower is tried first")
    description: str | None = Field(None, max_length=255)


class RuleOut(BaseModel):
    id: str
    direction: str
    protocol: str
    port_min: int | None
    port_max: int | None
    remote_cidr: str | None
    remote_group_id: str | None
    action: str
    priority: int
    description: str | None
    created_at: datetime


class SecurityGroupOut(BaseModel):
    id: str
    tenant_id: str
    vpc_id: str
    name: str
    description: str | None
    is_default: bool
    created_at: datetime
    rules: list[RuleOut]
