"""The one place where "may this caller do that?" is decided.

Every service method starts with :func:`require`. The order of the checks is the
contract: a resource of another tenant is *not found* (404, its existence is not
revealed), then a frozen tenant may only read, then the permission itself (403 naming it).
"""

from __future__ import annotations

from altostack.domain.errors import NotFound, PermissionDenied
from altostack.domain.permissions import (
    PLATFORM_MANAGED,
    PLATFORM_ONLY,
    grants,
    is_read,
    tags_match,
)
from altostack.services.context import Principal, RequestContext


def can(principal: Principal, permission: str) -> bool:
    if not grants(principal.permissions, permission):
        return False
    return principal.key_permissions is None or grants(principal.key_permissions, permission)


def visible(principal: Principal, tenant_id: str | None) -> bool:
    return principal.is_platform_admin or tenant_id == principal.tenant_id


def require(
    ctx: RequestContext,
    permission: str,
    *,
    tenant_id: str | None = None,
    kind: str | None = None,
    ident: str | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Raise unless the caller may do ``permission`` (on a resource of ``tenant_id``).

    ``kind``/``ident`` name the resource for the 404 message (``tenant_id`` None with an
    ``ident`` means it does not exist); ``tags`` are the resource's tags, checked against a
    sub-account's scope.
    """
    p = ctx.principal
    resource = permission.split(":", 1)[0]
    if ident is not None and (
        tenant_id is None  # the resource does not exist
        or not visible(p, tenant_id)
        or not tags_match(p.scope_tags, tags)
    ):
        raise NotFound.resource(kind or resource, ident)
    if resource in PLATFORM_ONLY and not p.is_platform_admin and ident is None:
        raise PermissionDenied(
            f"{permission!r} is for platform administrators only",
            extra={"permission": permission},
        )
    if resource in PLATFORM_MANAGED and not is_read(permission) and not p.is_platform_admin:
        raise PermissionDenied(
            f"{permission!r} is for platform administrators only",
            extra={"permission": permission},
        )
    if not is_read(permission) and p.tenant_status == "frozen":
        raise PermissionDenied(
            f"tenant {p.tenant_name!r} is frozen: it can read but not change anything; "
            "contact the platform administrator",
            extra={"permission": permission, "reason": "tenant_frozen"},
        )
    if not can(p, permission):
        raise PermissionDenied(
            f"missing permission {permission!r} (role {p.role!r}"
            + (", narrowed by the API key's role" if p.key_permissions is not None else "")
            + ")",
            extra={"permission": permission},
        )


def tenant_filter(ctx: RequestContext, requested: str | None) -> str | None:
    """The tenant a listing is limited to: the caller's own, or for platform admins the
    one they asked for (None: all tenants)."""
    if ctx.principal.is_platform_admin:
        return requested
    return ctx.principal.tenant_id


def require_not_frozen(ctx: RequestContext) -> None:
    """For the few mutations every role may make on its own account (own password)."""
    if ctx.principal.tenant_status == "frozen":
        raise PermissionDenied(
            f"tenant {ctx.principal.tenant_name!r} is frozen: it can read but not change "
            "anything; contact the platform administrator",
            extra={"reason": "tenant_frozen"},
        )
