"""compute: regions, clusters, hosts, instance types, images, placement groups, vms

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 01:42:59.715133
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import altostack.db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "anti_affinity_slots",
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=False),
        sa.Column("vm_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "host_id", name=op.f("pk_anti_affinity_slots")),
        sa.UniqueConstraint("vm_id", name=op.f("uq_anti_affinity_slots_vm_id")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("os_family", sa.String(length=32), nullable=False),
        sa.Column("os_version", sa.String(length=64), nullable=True),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("virtual_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("checksum_sha256", sa.String(length=64), nullable=True),
        sa.Column("min_disk_gib", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=8), nullable=False),
        sa.Column(
            "shared_with",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "source",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_tenant", ["tenant_id", "id"], unique=False)

    op.create_table(
        "instance_types",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("min_disk_gib", sa.Integer(), nullable=False),
        sa.Column("max_disk_gib", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_types")),
        sa.UniqueConstraint("name", name=op.f("uq_instance_types_name")),
    )
    op.create_table(
        "placement_groups",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_placement_groups")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_placement_groups_name"),
    )
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_placement_groups_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "regions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regions")),
        sa.UniqueConstraint("name", name=op.f("uq_regions_name")),
    )
    op.create_table(
        "vms",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=63), nullable=False),
        sa.Column("instance_type_id", sa.String(length=40), nullable=False),
        sa.Column("instance_type", sa.String(length=64), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("root_disk_gib", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column(
            "gpu_addresses",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("image_id", sa.String(length=40), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=True),
        sa.Column("cluster_id", sa.String(length=40), nullable=True),
        sa.Column("subnet_id", sa.String(length=40), nullable=True),
        sa.Column("private_ip", sa.String(length=45), nullable=True),
        sa.Column("placement_group_id", sa.String(length=40), nullable=True),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "ssh_keys",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("user_data", sa.Text(), nullable=True),
        sa.Column("power_state", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", altostack.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("purge_after", altostack.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vms")),
    )
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.create_index("ix_vms_host", ["host_id"], unique=False)
        batch_op.create_index("ix_vms_state", ["state"], unique=False)
        batch_op.create_index("ix_vms_tenant", ["tenant_id", "id"], unique=False)

    op.create_table(
        "clusters",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("region_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("cpu_allocation_ratio", sa.Float(), nullable=False),
        sa.Column("ram_allocation_ratio", sa.Float(), nullable=False),
        sa.Column("policy", sa.String(length=8), nullable=False),
        sa.Column("join_token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["region_id"], ["regions.id"], name=op.f("fk_clusters_region_id_regions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
        sa.UniqueConstraint("region_id", "name", name="uq_clusters_region_name"),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clusters_region_id"), ["region_id"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cluster_id", sa.String(length=40), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("admin_state", sa.String(length=16), nullable=False),
        sa.Column("liveness", sa.String(length=8), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("accel", sa.String(length=8), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("disk_gib", sa.BigInteger(), nullable=False),
        sa.Column(
            "gpus",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "capabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("vcpus_used", sa.Integer(), nullable=False),
        sa.Column("memory_mib_used", sa.BigInteger(), nullable=False),
        sa.Column("disk_gib_used", sa.BigInteger(), nullable=False),
        sa.Column("gpus_used", sa.Integer(), nullable=False),
        sa.Column("load", sa.Float(), nullable=False),
        sa.Column("agent_token_hash", sa.String(length=64), nullable=True),
        sa.Column(
            "last_heartbeat_at", altostack.db.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("created_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_hosts_cluster_id_clusters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("hostname", name=op.f("uq_hosts_hostname")),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hosts_cluster_id"), ["cluster_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hosts_cluster_id"))

    op.drop_table("hosts")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clusters_region_id"))

    op.drop_table("clusters")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_index("ix_vms_tenant")
        batch_op.drop_index("ix_vms_state")
        batch_op.drop_index("ix_vms_host")

    op.drop_table("vms")
    op.drop_table("regions")
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_placement_groups_tenant_id"))

    op.drop_table("placement_groups")
    op.drop_table("instance_types")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_tenant")

    op.drop_table("images")
    op.drop_table("anti_affinity_slots")
