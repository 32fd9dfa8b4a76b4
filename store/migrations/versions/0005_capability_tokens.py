"""capability tokens

Revision ID: 0005_capability_tokens
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import store.types

revision = "0005_capability_tokens"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capability_tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("uapk_id", sa.String(length=63), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("manifest_hash", sa.String(length=80), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("issued_via", sa.String(length=16), nullable=False),
        sa.Column("issued_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=254), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_captokens_org", "capability_tokens", ["org_id", "created_at"])
    op.create_index("ix_capability_tokens_revoked_at", "capability_tokens", ["revoked_at"])


def downgrade() -> None:
    op.drop_index("ix_capability_tokens_revoked_at", table_name="capability_tokens")
    op.drop_index("ix_captokens_org", table_name="capability_tokens")
    op.drop_table("capability_tokens")
