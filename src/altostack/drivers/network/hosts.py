"""Which network data plane a host runs, from its configuration."""

from __future__ import annotations

import os
import shutil


def use_linux(choice: str) -> bool:
    """``linux``/``sim`` as configured; ``auto``: linux where the agent may program the
    kernel (root, with nftables), else sim (VM NICs then stay on user-mode networking)."""
    if choice == "auto":
        return os.geteuid() == 0 and shutil.which("nft") is not None
    return choice == "linux"
