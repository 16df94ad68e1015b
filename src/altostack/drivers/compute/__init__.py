"""Compute drivers: the interface (``base``), the in-memory ``sim`` backend; ``qemu`` next."""

from altostack.drivers.compute.base import (
    ComputeCapabilities,
    ComputeDriver,
    ConsoleEndpoint,
    Gpu,
    HostInfo,
    NicSpec,
    VmSpec,
    VmStatus,
)

__all__ = [
    "ComputeCapabilities",
    "ComputeDriver",
    "ConsoleEndpoint",
    "Gpu",
    "HostInfo",
    "NicSpec",
    "VmSpec",
    "VmStatus",
]
