"""Permissions (``<resource>:<action>``), built-in roles and how they match.

A granted permission may use ``*`` for the resource, the action, or both: ``*:read``
lets a role read everything, ``vm:*`` do anything to VMs. Actions other than ``read``
are mutations, which is what a frozen tenant is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

RESOURCES = frozenset(
    {
        "tenant", "user", "role", "apikey", "quota", "operation", "event", "region",
        "cluster", "host", "instance-type", "image", "vm", "placement-group", "disk",
        "snapshot", "storage-pool", "vpc", "subnet", "security-group", "eip", "nic",
        "nat-gateway", "load-balancer", "vpn", "autoscaling", "alarm", "billing",
        "recycle-bin", "timer", "ip-pool",
    }
)  # fmt: skip

_PERMISSION = re.compile(r"^(\*|[a-z][a-z-]*):(\*|[a-z][a-z-]*)$")

BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    # The tenant's owner: everything inside the tenant.
    "owner": ("*:*",),
    # Tenant administrator: everything except the money and the owner's account (checked
    # in the user service).
    "admin": ("*:*",),
    # Runs resources day to day but cannot manage people, roles, keys or quotas.
    "operator": (
        "*:read",
        "vm:*",
        "image:*",
        "disk:*",
        "snapshot:*",
        "vpc:*",
        "subnet:*",
        "security-group:*",
        "eip:*",
        "nic:*",
        "nat-gateway:*",
        "load-balancer:*",
        "placement-group:*",
        "vpn:*",
        "autoscaling:*",
        "alarm:*",
        "timer:*",
        "recycle-bin:*",
        "apikey:create",
    ),
    "readonly": ("*:read",),
}

BUILTIN_DESCRIPTIONS = {
    "owner": "Owner of the tenant: every permission.",
    "admin": "Tenant administrator: every permission; cannot change the owner.",
    "operator": "Operates resources; cannot manage users, roles or quotas.",
    "readonly": "Reads everything; changes nothing.",
}

# Routes only platform administrators (the ``system`` tenant) may use at all.
PLATFORM_ONLY = frozenset({"tenant", "region", "cluster", "host", "storage-pool", "ip-pool"})
# Everyone reads these catalogues; only platform administrators change them.
PLATFORM_MANAGED = frozenset({"instance-type"})


def validate(permission: str) -> str | None:
    """None when valid, else a sentence saying what is wrong."""
    match = _PERMISSION.match(permission)
    if not match:
        return f"{permission!r} is not of the form '<resource>:<action>' (lower case, '*' allowed)"
    resource = match.group(1)
    if resource != "*" and resource not in RESOURCES:
        return f"unknown resource {resource!r} in {permission!r}"
    return None


def is_read(permission: str) -> bool:
    return permission.split(":", 1)[1] == "read"


def grants(granted: Iterable[str], wanted: str) -> bool:
    """Whether any granted permission covers ``wanted`` (which has no wildcards)."""
    w_res, _, w_act = wanted.partition(":")
    for perm in granted:
        res, _, act = perm.partition(":")
        if res in ("*", w_res) and act in ("*", w_act):
            return True
    return False


def tags_match(scope: dict[str, str], tags: dict[str, str] | None) -> bool:
    """A sub-account scoped to tags sees a resource only if it carries all of them."""
    if not scope:
        return True
    tags = tags or {}
    return all(tags.get(k) == v for k, v in scope.items())
