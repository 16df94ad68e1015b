"""Users: a tenant's owner and its sub-accounts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update

from altostack.db.database import Database
from altostack.db.models import ApiKey, AuthToken, User
from altostack.db.repositories import Page
from altostack.db.types import utcnow
from altostack.domain.errors import Conflict, InvalidRequest, PermissionDenied, Unauthenticated
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.apikeys import release_keys_of
from altostack.services.auth import AuthService
from altostack.services.context import RequestContext
from altostack.services.passwords import Passwords, check_strength
from altostack.services.quotas import QuotaService
from altostack.services.roles import role_exists
from altostack.services.tenants import check_username


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "tenant_id": u.tenant_id,
        "username": u.username,
        "role": u.role,
        "status": u.status,
        "is_platform_admin": u.is_platform_admin,
        "scope_tags": dict(u.scope_tags or {}),
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    }


class UserService:
    def __init__(
        self, db: Database, passwords: Passwords, auth: AuthService, quotas: QuotaService
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.passwords = passwords
        self.auth = auth

    async def create(
        self,
        ctx: RequestContext,
        *,
        username: str,
        password: str,
        role: str,
        tenant_id: str | None,
        scope_tags: dict[str, str] | None,
    ) -> dict[str, Any]:
        target = tenant_id or ctx.principal.tenant_id
        if target != ctx.principal.tenant_id and not ctx.principal.is_platform_admin:
            raise InvalidRequest.for_field("tenant_id", "only platform administrators may set it")
        authz.require(ctx, "user:create")
        check_username(username)
        check_strength(password)
        if (
            role == "owner"
            and ctx.principal.role != "owner"
            and not ctx.principal.is_platform_admin
        ):
            raise PermissionDenied("only the tenant owner can create another owner")
        password_hash = await self.passwords.hash(password)
        async with self.db.uow() as uow:
            tenant = await uow.tenants.get(target)
            if tenant is None:
                raise InvalidRequest.for_field("tenant_id", f"tenant {target!r} does not exist")
            if not await role_exists(uow, target, role):
                raise InvalidRequest.for_field(
                    "role", f"no role {role!r} in this tenant; see GET /v1/roles"
                )
            if await uow.users.by_login(target, username) is not None:
                raise Conflict(f"a user named {username!r} already exists in this tenant")
            user = User(
                id=new_id("user"),
                tenant_id=target,
                username=username,
                password_hash=password_hash,
                role=role,
                status="active",
                is_platform_admin=tenant.name == "system",
                scope_tags=dict(scope_tags or {}),
            )
            uow.users.add(user)
            ctx.audit.details = {"tenant_id": target}
            await uow.commit()
        return user_view(user)

    async def _load(self, uow: Any, ctx: RequestContext, user_id: str, permission: str) -> User:
        if user_id == "me":
            user_id = ctx.principal.user_id
        user: User | None = await uow.users.get(user_id)
        authz.require(
            ctx, permission, tenant_id=user.tenant_id if user else None, kind="user", ident=user_id
        )
        assert user is not None
        return user

    async def get(self, ctx: RequestContext, user_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return user_view(await self._load(uow, ctx, user_id, "user:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        tenant_id: str | None,
        status: str | None,
        role: str | None,
        username: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[User]:
        authz.require(ctx, "user:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(User.tenant_id == target)
        if status:
            where.append(User.status == status)
        if role:
            where.append(User.role == role)
        if username:
            where.append(User.username == username)
        async with self.db.uow(write=False) as uow:
            return await uow.users.page(where, limit=limit, cursor=cursor)

    def _guard_owner(self, ctx: RequestContext, user: User, verb: str) -> None:
        if user.id == ctx.principal.user_id:
            raise Conflict(f"you cannot {verb} your own account")
        if (
            user.role == "owner"
            and ctx.principal.role != "owner"
            and not (ctx.principal.is_platform_admin)
        ):
            raise PermissionDenied(f"only an owner or a platform administrator can {verb} an owner")

    async def set_status(self, ctx: RequestContext, user_id: str, status: str) -> dict[str, Any]:
        verb = "disable" if status == "disabled" else "enable"
        async with self.db.uow() as uow:
            user = await self._load(uow, ctx, user_id, f"user:{verb}")
            self._guard_owner(ctx, user, verb)
            user.status = status
            if status == "disabled":
                await uow.tokens.revoke_for_user(user.id)
            ctx.audit.details = {"tenant_id": user.tenant_id}
            await uow.commit()
        await self.auth.invalidate_user(user.id)
        return user_view(user)

    async def update(
        self,
        ctx: RequestContext,
        user_id: str,
        *,
        role: str | None,
        scope_tags: dict[str, str] | None,
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            user = await self._load(uow, ctx, user_id, "user:update")
            self._guard_owner(ctx, user, "change")
            if role is not None:
                if not await role_exists(uow, user.tenant_id, role):
                    raise InvalidRequest.for_field("role", f"no role {role!r} in this tenant")
                if (
                    role == "owner"
                    and ctx.principal.role != "owner"
                    and not (ctx.principal.is_platform_admin)
                ):
                    raise PermissionDenied("only the tenant owner can make another owner")
                user.role = role
            if scope_tags is not None:
                user.scope_tags = dict(scope_tags)
            ctx.audit.details = {"tenant_id": user.tenant_id}
            await uow.commit()
        await self.auth.invalidate_user(user.id)
        return user_view(user)

    async def reset_password(
        self, ctx: RequestContext, user_id: str, password: str
    ) -> dict[str, Any]:
        check_strength(password)
        password_hash = await self.passwords.hash(password)
        async with self.db.uow() as uow:
            user = await self._load(uow, ctx, user_id, "user:reset-password")
            self._guard_owner(ctx, user, "reset the password of")
            user.password_hash = password_hash
            await uow.tokens.revoke_for_user(user.id)
            ctx.audit.details = {"tenant_id": user.tenant_id}
            await uow.commit()
        await self.auth.invalidate_user(user.id)
        return user_view(user)

    async def change_own_password(self, ctx: RequestContext, old: str, new: str) -> None:
        """Any user may change their own password; other sessions are logged out."""
        authz.require_not_frozen(ctx)
        check_strength(new, "new_password")
        async with self.db.uow() as uow:
            user = await uow.users.get(ctx.principal.user_id)
            assert user is not None
            if not await self.passwords.verify(user.password_hash, old):
                raise Unauthenticated("old_password is wrong")
            user.password_hash = await self.passwords.hash(new)
            await uow.session.execute(
                update(AuthToken)
                .where(
                    AuthToken.user_id == user.id,
                    AuthToken.revoked_at.is_(None),
                    AuthToken.id != (ctx.principal.credential_id or ""),
                )
                .values(revoked_at=utcnow())
            )
            ctx.audit.resource_id = user.id
            ctx.audit.resource_type = "user"
            await uow.commit()
        await self.auth.invalidate_user(user.id)

    async def delete(self, ctx: RequestContext, user_id: str) -> None:
        async with self.db.uow() as uow:
            user = await self._load(uow, ctx, user_id, "user:delete")
            self._guard_owner(ctx, user, "delete")
            if user.role == "owner":
                owners = await uow.session.scalar(
                    select(func.count())
                    .select_from(User)
                    .where(User.tenant_id == user.tenant_id, User.role == "owner")
                )
                if (owners or 0) <= 1:
                    raise Conflict("a tenant keeps at least one owner")
            await release_keys_of(uow, self.quotas, user)
            await uow.session.execute(delete(AuthToken).where(AuthToken.user_id == user.id))
            await uow.session.execute(delete(ApiKey).where(ApiKey.user_id == user.id))
            await uow.session.delete(user)
            ctx.audit.details = {"tenant_id": user.tenant_id}
            await uow.commit()
        await self.auth.invalidate_user(user.id)
