"""approvals.counterparty: the escalated action's counterparty, shown to the approver and
bound into the override token's action hash

Revision ID: 0009_approval_counterparty
Revises: 0008_override_token_not_stored
"""
from alembic import op
import sqlalchemy as sa

from store.types import JSONType

revision = "0009_approval_counterparty"
down_revision = "0008_override_token_not_stored"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("counterparty", JSONType(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("counterparty")
