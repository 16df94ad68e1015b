"""Storage drivers: sim, local qcow2 and ceph rbd (storage issue)."""
