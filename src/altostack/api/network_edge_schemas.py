"""Bodies of the NIC, elastic IP, public IP pool and NAT gateway API (API.md: network)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from altostack.api.compute_schemas import Strict
from altostack.api.schemas import OperationOut


class NicCreate(Strict):
    subnet_id: str = Field(max_length=40)
    name: str | None = Field(None, min_length=1, max_length=64)
    private_ip: str | None = Field(None, max_length=64, description="default: the next free")
    security_group_ids: list[str] = Field([], max_length=5, description="default: the VPC's")


class NicUpdate(Strict):
    security_group_ids: list[str] = Field(
        max_length=5, description="groups of the NIC's VPC; [] means the VPC's default group"
    )


class NicAttach(Strict):
    vm_id: str = Field(max_length=40)


class Empty(Strict):
    pass


class NicOut(BaseModel):
    id: str
    tenant_id: str
    name: str | None
    vpc_id: str
    subnet_id: str
    mac: str
    private_ip: str
    security_group_ids: list[str]
    primary: bool
    vm_id: str | None
    device_index: int | None
    state: str
    created_at: datetime


class NicAccepted(BaseModel):
    operation: OperationOut
    nic: NicOut


class IpPoolCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    cidr: str = Field(max_length=64, description="the external network, e.g. 203.0.113.0/24")
    gateway_ip: str | None = Field(None, max_length=64, description="default: first address")
    range_start: str | None = Field(None, max_length=64, description="default: after gateway")
    range_end: str | None = Field(None, max_length=64, description="default: last usable")


class IpPoolOut(BaseModel):
    id: str
    region: str
    name: str
    cidr: str
    gateway_ip: str
    range_start: str
    range_end: str
    created_at: datetime


class EipCreate(Strict):
    bandwidth_mbps: int | None = Field(None, ge=1, le=10000)
    pool_id: str | None = Field(None, max_length=40, description="default: the region's first")


class EipUpdate(Strict):
    bandwidth_mbps: int | None = Field(None, ge=1, le=10000, description="null: unlimited")


class EipBind(Strict):
    vm_id: str | None = Field(None, max_length=40, description="binds the VM's primary NIC")
    nic_id: str | None = Field(None, max_length=40)
    nat_gateway_id: str | None = Field(None, max_length=40)


class EipOut(BaseModel):
    id: str
    tenant_id: str
    pool_id: str
    address: str
    bandwidth_mbps: int | None
    state: str
    nic_id: str | None
    nat_gateway_id: str | None
    vpc_id: str | None
    created_at: datetime


class EipAccepted(BaseModel):
    operation: OperationOut
    eip: EipOut


class NatGatewayCreate(Strict):
    vpc_id: str = Field(max_length=40)
    name: str = Field(min_length=1, max_length=64)
    eip_id: str | None = Field(None, max_length=40, description="an unbound EIP to use")


class SnatRuleCreate(Strict):
    subnet_id: str | None = Field(None, max_length=40, description="a whole subnet, or…")
    vm_id: str | None = Field(None, max_length=40, description="…one VM (whitelist)")


class DnatRuleCreate(Strict):
    protocol: Literal["tcp", "udp"] = "tcp"
    public_port: int = Field(ge=1, le=65535)
    vm_id: str = Field(max_length=40)
    private_port: int = Field(ge=1, le=65535)


class NatRuleOut(BaseModel):
    id: str
    kind: str
    subnet_id: str | None = None
    vm_id: str | None = None
    protocol: str | None = None
    public_port: int | None = None
    private_port: int | None = None
    created_at: datetime


class NatGatewayOut(BaseModel):
    id: str
    tenant_id: str
    vpc_id: str
    name: str
    state: str
    eip_id: str | None
    public_ip: str | None
    snat_rules: list[NatRuleOut]
    dnat_rules: list[NatRuleOut]
    created_at: datetime


class NatGatewayAccepted(BaseModel):
    operation: OperationOut
    nat_gateway: NatGatewayOut
