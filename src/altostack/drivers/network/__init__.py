"""Network drivers: the interface (``base``), the in-memory ``sim``; ``linux`` next."""

from altostack.drivers.network.base import (
    NetworkDriver,
    NetworkInfo,
    NetworkSpec,
    PortInfo,
    PortSpec,
)

__all__ = ["NetworkDriver", "NetworkInfo", "NetworkSpec", "PortInfo", "PortSpec"]
