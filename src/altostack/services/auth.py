"""Login, bearer tokens and the bootstrap administrator.

Tokens are opaque random strings; only their SHA-256 is stored (a stolen database does not
hand out sessions). Resolving a token is on every request's path, so resolved principals
are cached for a few seconds; anything that revokes access (logout, disabling a user)
drops the cache entry at once, in this process and, over the bus, in every other.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from altostack.bus import Bus, Message
from altostack.db.database import Database
from altostack.db.models import AuthToken, Tenant, User
from altostack.db.types import utcnow
from altostack.domain.errors import InvalidRequest, Unauthenticated
from altostack.domain.ids import new_id
from altostack.services.context import Principal
from altostack.services.passwords import Passwords
from altostack.settings import Settings

log = structlog.get_logger(__name__)

SYSTEM_TENANT = "system"
ADMIN_USERNAME = "admin"
INVALIDATE_SUBJECT = "auth.invalidate"
_CACHE_SECONDS = 5.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    user: User
    tenant: Tenant


def principal_for(user: User, tenant: Tenant, method: str, credential: str | None) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        role=user.role,
        is_platform_admin=user.is_platform_admin,
        auth_method=method,
        tenant_status=tenant.status,
        credential_id=credential,
    )


class AuthService:
    def __init__(self, db: Database, settings: Settings, passwords: Passwords) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._bus: Bus | None = None

    async def attach_bus(self, bus: Bus) -> None:
        self._bus = bus
        await bus.subscribe(INVALIDATE_SUBJECT, self._on_invalidate)

    async def _on_invalidate(self, message: Message) -> None:
        self._drop(message.data.get("user_id"))

    def _drop(self, user_id: str | None) -> None:
        for key, (principal, _) in list(self._cache.items()):
            if user_id is None or principal.user_id == user_id:
                self._cache.pop(key, None)

    async def invalidate_user(self, user_id: str | None) -> None:
        """Forget cached sessions of a user (None: of everyone), here and on the bus."""
        self._drop(user_id)
        if self._bus is not None:
            await self._bus.publish(INVALIDATE_SUBJECT, {"user_id": user_id})

    async def login(self, tenant_name: str, username: str, password: str) -> IssuedToken:
        async with self.db.uow() as uow:
            tenant = await uow.tenants.by_name(tenant_name)
            user = await uow.users.by_login(tenant.id, username) if tenant else None
            ok = await self.passwords.verify(
                user.password_hash if user else self.passwords.dummy_hash, password
            )
            if not (tenant and user and ok):
                raise Unauthenticated("wrong tenant, username or password")
            if user.status != "active":
                raise Unauthenticated(f"user {username!r} is {user.status}")
            if tenant.status == "deleted":
                raise Unauthenticated(f"tenant {tenant_name!r} is deleted")
            token = "alto_" + secrets.token_urlsafe(32)
            expires_at = utcnow() + timedelta(seconds=self.settings.token_ttl_seconds)
            uow.tokens.add(
                AuthToken(
                    id=new_id("tok"),
                    token_hash=hash_token(token),
                    user_id=user.id,
                    tenant_id=tenant.id,
                    expires_at=expires_at,
                )
            )
            await uow.commit()
        return IssuedToken(token, expires_at, user, tenant)

    async def authenticate_token(self, token: str) -> Principal:
        key = hash_token(token)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.db.uow(write=False) as uow:
            found = await uow.tokens.active_with_user(key)
        if found is None:
            raise Unauthenticated("the bearer token is not valid; log in again")
        record, user, tenant = found
        if record.revoked_at is not None:
            raise Unauthenticated("the bearer token was revoked; log in again")
        if record.expires_at <= utcnow():
            raise Unauthenticated("the bearer token has expired; log in again")
        if user.status != "active":
            raise Unauthenticated(f"user {user.username!r} is {user.status}")
        if tenant.status == "deleted":
            raise Unauthenticated(f"tenant {tenant.name!r} is deleted")
        principal = principal_for(user, tenant, "token", record.id)
        ttl = min(_CACHE_SECONDS, (record.expires_at - utcnow()).total_seconds())
        self._cache[key] = (principal, now + ttl)
        if len(self._cache) > 10000:
            self._cache.clear()
        return principal

    async def logout(self, token: str) -> None:
        key = hash_token(token)
        async with self.db.uow() as uow:
            found = await uow.tokens.active_with_user(key)
            if found is not None and found[0].revoked_at is None:
                found[0].revoked_at = utcnow()
                await uow.commit()
        self._cache.pop(key, None)
        if found is not None and self._bus is not None:
            await self._bus.publish(INVALIDATE_SUBJECT, {"user_id": found[1].id})

    async def bootstrap(self) -> str | None:
        """Create the ``system`` tenant and ``admin`` user on an empty database.

        Returns the generated password when none was configured, so it can be printed once.
        """
        async with self.db.uow() as uow:
            if await uow.tenants.by_name(SYSTEM_TENANT) is not None:
                return None
            configured = self.settings.bootstrap_admin_password
            password = configured.get_secret_value() if configured else None
            generated = None
            if not password:
                generated = password = secrets.token_urlsafe(12)
            if len(password) < 8:
                raise InvalidRequest.for_field(
                    "ALTO_BOOTSTRAP_ADMIN_PASSWORD", "must be at least 8 characters"
                )
            tenant = Tenant(id=new_id("tenant"), name=SYSTEM_TENANT, status="active")
            uow.tenants.add(tenant)
            await uow.flush()
            uow.users.add(
                User(
                    id=new_id("user"),
                    tenant_id=tenant.id,
                    username=ADMIN_USERNAME,
                    password_hash=await self.passwords.hash(password),
                    role="owner",
                    is_platform_admin=True,
                )
            )
            await uow.commit()
        log.info("bootstrap admin created", tenant=SYSTEM_TENANT, username=ADMIN_USERNAME)
        return generated
