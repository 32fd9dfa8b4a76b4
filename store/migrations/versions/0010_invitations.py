"""invitations: joining an organization is an invitation the invited user accepts

``POST /orgs/{org_id}/users`` used to add an existing account at once (and answer with its
user id): any organization could enumerate and enrol another's users. It now records an
invitation, addressed to an email; the membership is created when that user accepts.

Revision ID: 0010_invitations
Revises: 0009_approval_counterparty
"""
from alembic import op
import sqlalchemy as sa

import store.types

revision = "0010_invitations"
down_revision = "0009_approval_counterparty"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("invited_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_invitations_org_created", "invitations", ["org_id", "created_at"])
    op.create_index("ix_invitations_email_status", "invitations", ["email", "status"])
    op.create_index(
        "uq_invitations_pending", "invitations", ["org_id", "email"], unique=True,
        sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("uq_invitations_pending", table_name="invitations")
    op.drop_index("ix_invitations_email_status", table_name="invitations")
    op.drop_index("ix_invitations_org_created", table_name="invitations")
    op.drop_table("invitations")
