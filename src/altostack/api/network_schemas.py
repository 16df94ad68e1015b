"""Request and response bodies of the virtual network API (API.md: network)."""

from __future__ import annotations

from datetime import datetime

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
