"""connectors: upstream MCP servers, HTTP connectors and capability bindings (issue 14)

Secrets are stored only sealed (``secrets_sealed``, AES-GCM under a key kept in the data dir:
store/secret_keys.py); header and environment *names* are kept in clear.

Revision ID: 0011_connectors
Revises: 0010_invitations
"""
from alembic import op
import sqlalchemy as sa

import store.types

revision = "0011_connectors"
down_revision = "0010_invitations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mcp_servers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=48), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("allow_private_addresses", sa.Boolean(), nullable=False),
        sa.Column("command", sa.Text(), nullable=True),
        sa.Column("args", sa.JSON(), nullable=True),
        sa.Column("header_names", sa.JSON(), nullable=False),
        sa.Column("env_names", sa.JSON(), nullable=False),
        sa.Column("secrets_sealed", sa.Text(), nullable=True),
        sa.Column("tools", sa.JSON(), nullable=True),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "name", name="uq_mcp_servers_org_name"),
    )
    op.create_index("ix_mcp_servers_org_created", "mcp_servers", ["org_id", "created_at"])

    op.create_table(
        "http_connectors",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("url_template", sa.Text(), nullable=False),
        sa.Column("header_names", sa.JSON(), nullable=False),
        sa.Column("secrets_sealed", sa.Text(), nullable=True),
        sa.Column("allowed_hosts", sa.JSON(), nullable=False),
        sa.Column("allow_private_addresses", sa.Boolean(), nullable=False),
        sa.Column("connect_timeout_ms", sa.Integer(), nullable=False),
        sa.Column("total_timeout_ms", sa.Integer(), nullable=False),
        sa.Column("max_response_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "name", name="uq_http_connectors_org_name"),
    )
    op.create_index("ix_http_connectors_org_created", "http_connectors", ["org_id", "created_at"])

    op.create_table(
        "connector_bindings",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("capability", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=8), nullable=False),
        sa.Column("http_connector_id", sa.String(length=36), nullable=True),
        sa.Column("mcp_server_id", sa.String(length=36), nullable=True),
        sa.Column("tool", sa.String(length=200), nullable=True),
        sa.Column("amount_arg", sa.String(length=128), nullable=True),
        sa.Column("currency_arg", sa.String(length=128), nullable=True),
        sa.Column("counterparty_arg", sa.String(length=128), nullable=True),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["http_connector_id"], ["http_connectors.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["mcp_server_id"], ["mcp_servers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "capability", name="uq_connector_bindings_org_capability"),
    )
    op.create_index("ix_connector_bindings_org_created", "connector_bindings", ["org_id", "created_at"])
    op.create_index("ix_connector_bindings_http_connector_id", "connector_bindings", ["http_connector_id"])
    op.create_index("ix_connector_bindings_mcp_server_id", "connector_bindings", ["mcp_server_id"])


def downgrade() -> None:
    op.drop_index("ix_connector_bindings_mcp_server_id", table_name="connector_bindings")
    op.drop_index("ix_connector_bindings_http_connector_id", table_name="connector_bindings")
    op.drop_index("ix_connector_bindings_org_created", table_name="connector_bindings")
    op.drop_table("connector_bindings")
    op.drop_index("ix_http_connectors_org_created", table_name="http_connectors")
    op.drop_table("http_connectors")
    op.drop_index("ix_mcp_servers_org_created", table_name="mcp_servers")
    op.drop_table("mcp_servers")
