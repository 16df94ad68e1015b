"""The authorization rules as pure functions: wildcards, narrowing, tag scopes, order."""

from __future__ import annotations

import pytest

from altostack.domain.errors import NotFound, PermissionDenied
from altostack.domain.permissions import grants, tags_match, validate
from altostack.services import authz
from altostack.services.context import Principal, RequestContext


def ctx(perms, *, tenant="tenant-a", status="active", key=None, scope=None, admin=False):
    return RequestContext(
        Principal(
            user_id="user-1",
            username="u",
            tenant_id=tenant,
            tenant_name="a",
            role="custom",
            is_platform_admin=admin,
            auth_method="token",
            tenant_status=status,
            permissions=tuple(perms),
            key_permissions=key,
            scope_tags=scope or {},
        )
    )


def test_wildcards():
    assert grants(["*:read"], "vm:read") and not grants(["*:read"], "vm:start")
    assert grants(["vm:*"], "vm:start") and not grants(["vm:*"], "disk:read")
    assert grants(["*:*"], "anything:goes")
    assert validate("vm:start") is None and validate("*:*") is None
    assert "unknown resource" in (validate("spaceship:fly") or "")
    assert "form" in (validate("VM") or "")


def test_custom_role_vm_read_start_does_exactly_that():
    c = ctx(["vm:read", "vm:start"])
    authz.require(c, "vm:read")
    authz.require(c, "vm:start")
    for other in ("vm:stop", "vm:create", "vm:delete", "disk:read", "user:read"):
        with pytest.raises(PermissionDenied, match=other):
            authz.require(c, other)


def test_order_other_tenant_is_404_before_403():
    c = ctx(["vm:read"])
    with pytest.raises(NotFound):
        authz.require(c, "vm:delete", tenant_id="tenant-b", kind="vm", ident="vm-x")
    with pytest.raises(PermissionDenied):
        authz.require(c, "vm:delete", tenant_id="tenant-a", kind="vm", ident="vm-x")


def test_frozen_tenant_reads_only():
    c = ctx(["*:*"], status="frozen")
    authz.require(c, "vm:read")
    with pytest.raises(PermissionDenied, match="frozen"):
        authz.require(c, "vm:start")


def test_key_role_narrows():
    c = ctx(["*:*"], key=("*:read",))
    authz.require(c, "vm:read")
    with pytest.raises(PermissionDenied, match="narrowed"):
        authz.require(c, "vm:create")


def test_tag_scope_hides_untagged_resources():
    c = ctx(["vm:*"], scope={"team": "web"})
    authz.require(c, "vm:start", tenant_id="tenant-a", ident="vm-1", tags={"team": "web", "x": "y"})
    with pytest.raises(NotFound):
        authz.require(c, "vm:start", tenant_id="tenant-a", ident="vm-2", tags={"team": "db"})
    with pytest.raises(NotFound):
        authz.require(c, "vm:read", tenant_id="tenant-a", ident="vm-3", tags=None)
    assert tags_match({}, None)


def test_platform_only_collections():
    with pytest.raises(PermissionDenied, match="platform administrators"):
        authz.require(ctx(["*:*"]), "tenant:create")
    authz.require(ctx(["*:*"], admin=True), "tenant:create")


def test_missing_resource_is_404_even_for_platform_admins():
    with pytest.raises(NotFound):
        authz.require(ctx(["*:*"], admin=True), "operation:read", tenant_id=None, ident="op-x")
