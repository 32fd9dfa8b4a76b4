"""policy rules: Casbin lines (live/shadow), versions, shadow diffs

Revision ID: 0007_policy_rules
Revises: 0006_audit
"""
from alembic import op
import sqlalchemy as sa
import store.types

revision = "0007_policy_rules"
down_revision = "0006_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("ruleset", sa.String(length=16), nullable=False),
        sa.Column("ptype", sa.String(length=8), nullable=False),
        sa.Column("v0", sa.String(length=255), nullable=False),
        sa.Column("v1", sa.String(length=255), nullable=False),
        sa.Column("v2", sa.String(length=255), nullable=False),
        sa.Column("v3", sa.Text(), nullable=False),
        sa.Column("v4", sa.String(length=255), nullable=False),
        sa.Column("v5", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_policy_rules_org_set", "policy_rules", ["org_id", "ruleset"])
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("change", sa.String(length=200), nullable=False),
        sa.Column("author", sa.String(length=300), nullable=False),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "kind", "version", name="uq_policy_versions_org_kind_version"),
    )
    op.create_table(
        "policy_shadow_diffs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("shadow_version", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("uapk_id", sa.String(length=63), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("capability", sa.String(length=200), nullable=False),
        sa.Column("live_decision", sa.String(length=16), nullable=False),
        sa.Column("shadow_decision", sa.String(length=16), nullable=False),
        sa.Column("live_reasons", sa.JSON(), nullable=False),
        sa.Column("shadow_reasons", sa.JSON(), nullable=False),
        sa.Column("live_policy_version", sa.String(length=80), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_policy_shadow_diffs_org", "policy_shadow_diffs", ["org_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_policy_shadow_diffs_org", table_name="policy_shadow_diffs")
    op.drop_table("policy_shadow_diffs")
    op.drop_table("policy_versions")
    op.drop_index("ix_policy_rules_org_set", table_name="policy_rules")
    op.drop_table("policy_rules")
