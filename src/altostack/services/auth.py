"""Login, bearer tokens and the bootstrap administrator.

Tokens are opaque random strings; only their SHA-256 is stored (a stolen database does not
hand out sessions). Resolving a token is on every request's path, so resolved principals
are cached for a few seconds; anything that revokes access (logout, disabling a user)
drops the cache entry at once, in this process and, over the bus, in every other.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from altostack.bus import Bus, Message
from altostack.client import signing
from altostack.db.database import Database
from altostack.db.models import AuthToken, Tenant, User
from altostack.db.types import utcnow
from altostack.domain.errors import InvalidRequest, Unauthenticated
from altostack.domain.ids import new_id
from altostack.services import login_throttle
from altostack.services.context import Principal
from altostack.services.passwords import Passwords
from altostack.services.roles import permissions_of
from altostack.settings import Settings

log = structlog.get_logger(__name__)

SYSTEM_TENANT = "system"
ADMIN_USERNAME = "admin"
INVALIDATE_SUBJECT = "auth.invalidate"
_CACHE_SECONDS = 5.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_DIGESTS_MAX = 10000


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    user: User
    tenant: Tenant


def _check_active(user: User, tenant: Tenant) -> None:
    if user.status != "active":
        raise Unauthenticated(f"user {user.username!r} is {user.status}")
    if tenant.status == "deleted":
        raise Unauthenticated(f"tenant {tenant.name!r} is deleted")


def derive_secret(master: bytes, key_id: str, nonce: str) -> str:
    """An API key's secret, recomputed from the server's key; never stored anywhere."""
    digest = hmac.new(master, f"{key_id}:{nonce}".encode(), hashlib.sha256).digest()
    return "sk_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def principal_for(
    user: User,
    tenant: Tenant,
    method: str,
    credential: str | None,
    permissions: tuple[str, ...] = (),
    key_permissions: tuple[str, ...] | None = None,
) -> Principal:
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
        permissions=permissions,
        key_permissions=key_permissions,
        scope_tags=dict(user.scope_tags or {}),
    )


class AuthService:
    def __init__(
        self, db: Database, settings: Settings, passwords: Passwords, master_key: bytes
    ) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.master_key = master_key
        self.throttle = login_throttle.ThrottlePolicy(
            user_max_failures=settings.login_max_failures_user,
            ip_max_failures=settings.login_max_failures_ip,
            lockout_seconds=settings.login_lockout_seconds,
        )
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._key_nonces: dict[str, str] = {}
        self._loading: dict[str, asyncio.Future[Principal]] = {}
        self._digests: dict[str, str] = {}
        self._bus: Bus | None = None

    async def attach_bus(self, bus: Bus) -> None:
        self._bus = bus
        await bus.subscribe(INVALIDATE_SUBJECT, self._on_invalidate)

    async def _on_invalidate(self, message: Message) -> None:
        if "key_id" in message.data:
            self._cache.pop("key:" + str(message.data["key_id"]), None)
        else:
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

    async def login(
        self, tenant_name: str, username: str, password: str, source_ip: str | None = None
    ) -> IssuedToken:
        keys = [login_throttle.user_key(tenant_name, username), login_throttle.ip_key(source_ip)]
        async with self.db.uow() as uow:
            await login_throttle.check(uow, keys)
            tenant = await uow.tenants.by_name(tenant_name)
            user = await uow.users.by_login(tenant.id, username) if tenant else None
        ok = await self.passwords.verify(
            user.password_hash if user else self.passwords.dummy_hash, password
        )
        if not (tenant and user and ok):
            async with self.db.uow() as uow:
                await login_throttle.record_failure(uow, self.throttle, keys)
                await uow.commit()
            raise Unauthenticated("wrong tenant, username or password")
        if user.status != "active":
            raise Unauthenticated(f"user {username!r} is {user.status}")
        token = "alto_" + secrets.token_urlsafe(32)
        expires_at = utcnow() + timedelta(seconds=self.settings.token_ttl_seconds)
        async with self.db.uow() as uow:
            await login_throttle.record_success(uow, keys[0])
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
        # Hashing is ~3 % of a polled GET; the digest of a token seen recently is kept.
        key = self._digests.get(token)
        if key is None:
            key = hash_token(token)
            if len(self._digests) >= _DIGESTS_MAX:
                self._digests.clear()
            self._digests[token] = key
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        return await self._single_flight(key, lambda: self._load_token_principal(key))

    async def _single_flight(self, key: str, load: Callable[[], Awaitable[Principal]]) -> Principal:
        """One database load per cache key at a time: when an entry expires under load,
        every request holding that credential would otherwise miss together and queue
        dozens of identical reads (measured: p99 of 64 pollers 390 ms → see benchmarks)."""
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[key] = pending
            pending.add_done_callback(lambda done: self._loaded(key, done))
        # Shielded: a caller that goes away must not cancel the load the others await.
        return await asyncio.shield(pending)

    def _loaded(self, key: str, done: asyncio.Future[Principal]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved: a refusal nobody awaited any more is not an error

    async def _load_token_principal(self, key: str) -> Principal:
        now = time.monotonic()
        async with self.db.uow(write=False) as uow:
            found = await uow.tokens.active_with_user(key)
            if found is None:
                raise Unauthenticated("the bearer token is not valid; log in again")
            record, user, tenant = found
            if record.revoked_at is not None:
                raise Unauthenticated("the bearer token was revoked; log in again")
            if record.expires_at <= utcnow():
                raise Unauthenticated("the bearer token has expired; log in again")
            _check_active(user, tenant)
            permissions = await permissions_of(uow, tenant.id, user.role)
        principal = principal_for(user, tenant, "token", record.id, permissions)
        ttl = min(_CACHE_SECONDS, (record.expires_at - utcnow()).total_seconds())
        self._remember(key, principal, now + ttl)
        return principal

    async def authenticate_signature(
        self, header: str, *, method: str, path: str, query: bytes, body: bytes
    ) -> Principal:
        """Check an ``ALTO1-HMAC-SHA256`` signed request (API.md) and return its caller."""
        try:
            signed = signing.parse_authorization(header)
        except signing.SignatureError as exc:
            raise Unauthenticated(str(exc)) from exc
        cache_key = "key:" + signed.key_id
        cached = self._cache.get(cache_key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await self._single_flight(
                cache_key, lambda: self._load_key_principal(signed.key_id)
            )
        nonce = self._key_nonces[signed.key_id]
        secret = derive_secret(self.master_key, signed.key_id, nonce)
        try:
            signing.verify(
                secret, signed, method=method, path=path, query=query, body=body, now=time.time()
            )
        except signing.SignatureError as exc:
            raise Unauthenticated(str(exc)) from exc
        return principal

    async def _load_key_principal(self, key_id: str) -> Principal:
        async with self.db.uow(write=False) as uow:
            found = await uow.api_keys.with_owner(key_id)
            if found is None:
                raise Unauthenticated(f"unknown API key {key_id!r}")
            key, user, tenant = found
            if key.status != "active":
                raise Unauthenticated(f"API key {key_id!r} was revoked")
            if key.expires_at is not None and key.expires_at <= utcnow():
                raise Unauthenticated(
                    f"API key {key_id!r} expired at {key.expires_at:%Y-%m-%dT%H:%M:%SZ}"
                )
            _check_active(user, tenant)
            permissions = await permissions_of(uow, tenant.id, user.role)
            narrowed = await permissions_of(uow, tenant.id, key.role) if key.role else None
        self._key_nonces[key_id] = key.nonce
        principal = principal_for(user, tenant, "apikey", key_id, permissions, narrowed)
        self._remember("key:" + key_id, principal, time.monotonic() + _CACHE_SECONDS)
        return principal

    def _remember(self, key: str, principal: Principal, until: float) -> None:
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (principal, until)

    async def forget_key(self, key_id: str) -> None:
        """Revocation takes effect at once, here and in every process on the bus."""
        self._cache.pop("key:" + key_id, None)
        if self._bus is not None:
            await self._bus.publish(INVALIDATE_SUBJECT, {"key_id": key_id})

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
