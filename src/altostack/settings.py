"""One typed settings object for every process.

Values come, highest priority first, from keyword arguments, ``ALTO_*`` environment
variables, and an optional TOML file named by ``ALTO_CONFIG``. Keeping every knob here is
what lets ``alto config show`` print the whole truth of a running deployment.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "altostack"


class CephSettings(BaseModel):
    """How this host reaches its cluster's Ceph RBD pool (the ``ceph`` storage backend).

    Per-cluster host configuration, set on each host of the cluster (TOML ``[ceph]`` or
    ``ALTO_CEPH='{"pool": ...}'``); never part of an API response. The fields are those of
    ``drivers.storage.ceph_cluster.CephConfig``: ``CephConfig(**settings.ceph.model_dump())``.
    """

    pool: str = "rbd"
    conf_path: Path = Path("/etc/ceph/ceph.conf")
    client_id: str = Field("admin", description="cephx user without 'client.'")
    keyring: Path | None = Field(None, description="default: what the conf file names")
    namespace: str = Field("", description="RBD namespace in the pool ('' = default)")
    op_timeout: float = Field(
        30.0, gt=0, description="Seconds an OSD/monitor operation may take before failing"
    )
    work_dir: Path | None = Field(None, description="Where uploads are spooled (temp dir)")


class Settings(BaseSettings):
    """Everything a deployment can tune; secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(env_prefix="ALTO_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    db: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    bus: str = Field("memory://", description="memory:// or nats://host:port")
    driver: Literal["auto", "qemu", "sim"] = Field(
        "auto",
        description="Hypervisor of the all-in-one's local host: qemu (one real host, this "
        "machine), sim (sim_hosts simulated ones), auto (qemu when qemu-system is installed)",
    )
    sim_hosts: int = Field(1, ge=0, le=10000)
    external_bridge: str | None = Field(
        None,
        max_length=15,
        description="Bridge of this host's external (public) network, where VPC routers "
        "put their external leg (linux network driver); the all-in-one lab makes one",
    )
    network_driver: Literal["auto", "linux", "sim"] = Field(
        "auto",
        description="VPC data plane of the QEMU all-in-one: linux (bridges, VXLAN, nftables, "
        "router namespaces, taps for VM NICs; needs root) or sim (VM NICs on user-mode "
        "networking); auto = linux when running as root",
    )
    lab_namespace: str = Field(
        "alto-ext",
        max_length=15,
        description="Namespace standing in for the upstream router of the all-in-one lab's "
        "external network (clients playing 'the internet' run in it)",
    )
    public_pool_cidr: str = Field(
        "203.0.113.0/24",
        description="The all-in-one's public IP pool, created on first start ('' for none)",
    )
    qemu_run_as: str = Field(
        "auto",
        description="User QEMU drops to (-runas): auto = a dedicated alto-qemu user where "
        "the host allows it (root agent, state dir reachable); '' = never; or a user name",
    )
    qemu_hot_add_vcpus: int = Field(
        16,
        ge=0,
        le=255,
        description="vCPUs a running QEMU VM may grow to without a restart (room given at "
        "each cold start; 0 = no CPU/memory hot-add: resizes need a restart)",
    )
    qemu_hot_add_memory_mib: int = Field(
        65536,
        ge=0,
        description="MiB a running QEMU VM may grow to without a restart (capped at the "
        "host's memory; 0 = no CPU/memory hot-add)",
    )
    default_image: Path | None = Field(
        None,
        description="qcow2 imported as the default public image when the qemu driver first "
        "starts; default: the test guest built by scripts/build-test-image",
    )
    seed: bool = Field(
        True, description="Give an empty cloud a region, a cluster, instance types and an image"
    )

    bootstrap_admin_password: SecretStr | None = None
    token_ttl_seconds: int = Field(12 * 3600, ge=60)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1)
    idempotency_wait_seconds: float = Field(
        30.0, description="How long a retry waits for a first request with the same key"
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Server secret (API-key secrets derive from it); default: generated "
        "once into data_dir/secret.key. Clusters must set the same value on every API node.",
    )
    region: str = Field("default", min_length=1, max_length=64)
    default_quotas: dict[str, int] = Field(
        default_factory=dict, description="Overrides of the built-in default quota limits"
    )
    login_max_failures_user: int = Field(5, ge=1)
    login_max_failures_ip: int = Field(20, ge=1)
    login_lockout_seconds: int = Field(60, ge=1)
    password_hash_time_cost: int = Field(3, ge=1)
    password_hash_memory_kib: int = Field(65536, ge=8)

    worker_concurrency: int = Field(8, ge=1, le=256)
    operation_lease_seconds: float = Field(
        30.0, gt=0, description="A worker that dies loses its claim on an operation after this"
    )
    operation_max_attempts: int = Field(5, ge=1)
    worker_poll_seconds: float = Field(2.0, gt=0)

    heartbeat_interval_seconds: float = Field(5.0, gt=0)
    heartbeat_timeout_seconds: float = Field(
        30.0, gt=0, description="A host that sent no heartbeat for this long is down"
    )
    agent_timeout_seconds: float = Field(
        15.0, gt=0, description="How long a command waits for a host agent's answer"
    )
    recycle_seconds: int = Field(
        360000, ge=0, description="How long deleted VMs stay in the recycle bin (100 h)"
    )
    snapshots_per_disk: int = Field(10, ge=1, description="The most snapshots one disk may have")
    sim_timing_scale: float = Field(
        1.0, ge=0, description="Multiplies the sim driver's realistic delays (0: instant)"
    )
    janitor_interval_seconds: float = Field(300.0, gt=0)
    novnc_dir: Path = Field(
        Path("/usr/share/novnc"), description="noVNC's files (Debian's novnc package)"
    )
    console_idle_seconds: float = Field(
        1800.0, gt=0, description="A console with no traffic either way is closed after this"
    )
    storage_backend: Literal["local", "ceph"] = Field(
        "local",
        description="Where QEMU hosts keep cloud disks: local qcow2 files, or the Ceph RBD "
        "pool of [ceph] (shared by the cluster's hosts)",
    )
    ceph: CephSettings = Field(
        default_factory=CephSettings, description="The Ceph RBD pool of this host's cluster"
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    # NoDecode: ALTO_PLUGINS is a comma-separated list, not JSON (the validator splits it).
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra modules imported at start (e.g. test-only operation kinds)",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def master_key(self) -> bytes:
        """The server secret: configured, or created once (0600) in the data directory."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process of this node won the race
                return path.read_text().strip().encode()
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()

    @property
    def database_url(self) -> str:
        """The URL in use: the explicit one, or the embedded SQLite file."""
        if self.db:
            return self.db
        return f"sqlite+aiosqlite:///{self.data_dir / 'altostack.db'}"

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secrets and URL passwords hidden."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = "********" if value.get_secret_value() else None
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, BaseModel):
                out[name] = value.model_dump(mode="json")
            elif isinstance(value, str):
                out[name] = mask_url(value)  # db, bus (nats://user:password@...), ...
            else:
                out[name] = value
        out["database_url"] = mask_url(self.database_url)
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ALTO_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def mask_url(url: str) -> str:
    """Hide the password part of ``scheme://user:password@host`` URLs."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:********@{host}"
    return url
