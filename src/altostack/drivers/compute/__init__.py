"""Compute drivers: sim and qemu (compute and QEMU issues)."""
