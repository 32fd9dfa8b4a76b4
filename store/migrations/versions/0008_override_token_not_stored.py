"""override tokens are never stored: drop approvals.override_token

The approve call signs the token with ``iat = decided_at`` and a recorded ``jti`` and expiry;
the agent's poll re-signs the same claims (Ed25519 is deterministic), so the bearer token
never rests in the database.

Revision ID: 0008_override_token_not_stored
Revises: 0007_policy_rules
"""
from alembic import op
import sqlalchemy as sa

revision = "0008_override_token_not_stored"
down_revision = "0007_policy_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("override_token")


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("override_token", sa.Text(), nullable=True))
