"""Roles: the built-in four and custom roles per tenant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from altostack.db.database import Database
from altostack.db.models import Role, User
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, FieldError, InvalidRequest
from altostack.domain.ids import new_id
from altostack.domain.permissions import BUILTIN_DESCRIPTIONS, BUILTIN_ROLES, validate
from altostack.services import authz
from altostack.services.context import RequestContext

if TYPE_CHECKING:  # auth resolves role permissions through this module
    from altostack.services.auth import AuthService


def builtin_view(name: str) -> dict[str, Any]:
    return {
        "id": f"role-{name}",
        "name": name,
        "tenant_id": None,
        "builtin": True,
        "description": BUILTIN_DESCRIPTIONS[name],
        "permissions": list(BUILTIN_ROLES[name]),
        "created_at": None,
    }


def role_view(role: Role) -> dict[str, Any]:
    return {
        "id": role.id,
        "name": role.name,
        "tenant_id": role.tenant_id,
        "builtin": False,
        "description": role.description,
        "permissions": list(role.permissions),
        "created_at": role.created_at,
    }


async def permissions_of(uow: UnitOfWork, tenant_id: str, role: str) -> tuple[str, ...]:
    """The permissions a role name grants inside a tenant (empty when it no longer exists)."""
    if role in BUILTIN_ROLES:
        return BUILTIN_ROLES[role]
    row = await uow.session.scalar(
        select(Role).where(Role.tenant_id == tenant_id, Role.name == role)
    )
    return tuple(row.permissions) if row else ()


async def role_exists(uow: UnitOfWork, tenant_id: str, role: str) -> bool:
    return role in BUILTIN_ROLES or bool(await permissions_of(uow, tenant_id, role))


def check_permissions(permissions: Sequence[str]) -> None:
    errors = [
        FieldError(f"permissions.{i}", message)
        for i, perm in enumerate(permissions)
        if (message := validate(perm)) is not None
    ]
    if errors:
        raise InvalidRequest("; ".join(e.message for e in errors), errors=errors)
    if not permissions:
        raise InvalidRequest.for_field("permissions", "must list at least one permission")


class RoleService:
    def __init__(self, db: Database, auth: AuthService) -> None:
        self.db = db
        self.auth = auth

    async def list(self, ctx: RequestContext, tenant_id: str | None) -> list[dict[str, Any]]:
        authz.require(ctx, "role:read")
        target = authz.tenant_filter(ctx, tenant_id) or ctx.principal.tenant_id
        async with self.db.uow(write=False) as uow:
            rows = await uow.session.scalars(
                select(Role).where(Role.tenant_id == target).order_by(Role.id.desc())
            )
            custom = [role_view(r) for r in rows]
        return [builtin_view(name) for name in BUILTIN_ROLES] + custom

    async def get(self, ctx: RequestContext, role_id: str) -> dict[str, Any]:
        name = role_id.removeprefix("role-")
        if role_id.startswith("role-") and name in BUILTIN_ROLES:
            authz.require(ctx, "role:read")
            return builtin_view(name)
        async with self.db.uow(write=False) as uow:
            role = await uow.session.get(Role, role_id)
        authz.require(
            ctx, "role:read", tenant_id=role.tenant_id if role else None, kind="role", ident=role_id
        )
        assert role is not None
        return role_view(role)

    async def create(
        self, ctx: RequestContext, name: str, permissions: Sequence[str], description: str | None
    ) -> dict[str, Any]:
        authz.require(ctx, "role:create")
        if name in BUILTIN_ROLES:
            raise InvalidRequest.for_field("name", f"{name!r} is a built-in role name")
        check_permissions(permissions)
        tenant_id = ctx.principal.tenant_id
        async with self.db.uow() as uow:
            exists = await uow.session.scalar(
                select(Role).where(Role.tenant_id == tenant_id, Role.name == name)
            )
            if exists is not None:
                raise Conflict(f"a role named {name!r} already exists in this tenant")
            role = Role(
                id=new_id("role"),
                tenant_id=tenant_id,
                name=name,
                description=description,
                permissions=sorted(set(permissions)),
            )
            uow.session.add(role)
            await uow.commit()
        return role_view(role)

    async def update(
        self,
        ctx: RequestContext,
        role_id: str,
        permissions: Sequence[str] | None,
        description: str | None,
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            role = await uow.session.get(Role, role_id)
            authz.require(
                ctx,
                "role:update",
                tenant_id=role.tenant_id if role else None,
                kind="role",
                ident=role_id,
            )
            assert role is not None
            if permissions is not None:
                check_permissions(permissions)
                role.permissions = sorted(set(permissions))
            if description is not None:
                role.description = description
            await uow.commit()
        await self.auth.invalidate_user(None)  # holders of the role see the change at once
        return role_view(role)

    async def delete(self, ctx: RequestContext, role_id: str) -> None:
        async with self.db.uow() as uow:
            role = await uow.session.get(Role, role_id)
            if role is None and role_id.removeprefix("role-") in BUILTIN_ROLES:
                authz.require(ctx, "role:delete")
                raise Conflict("built-in roles cannot be deleted")
            authz.require(
                ctx,
                "role:delete",
                tenant_id=role.tenant_id if role else None,
                kind="role",
                ident=role_id,
            )
            assert role is not None
            users = await uow.session.scalar(
                select(func.count())
                .select_from(User)
                .where(User.tenant_id == role.tenant_id, User.role == role.name)
            )
            if users:
                raise Conflict(
                    f"role {role.name!r} is assigned to {users} user(s); give them another "
                    "role first"
                )
            await uow.session.delete(role)
            await uow.commit()
