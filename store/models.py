"""SQLAlchemy 2 models. Ids are UUID strings (portable across SQLite and PostgreSQL)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.types import JSONType, UTCDateTime


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Invitation(Base):
    """An invitation to join an organization, addressed to an email address. The membership
    is created only when the user with that address, signed in, accepts it."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index("ix_invitations_org_created", "org_id", "created_at"),
        Index("ix_invitations_email_status", "email", "status"),
        # At most one pending invitation per organization and address.
        Index("uq_invitations_pending", "org_id", "email", unique=True,
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # pending | accepted | declined | revoked | expired
    invited_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA256(pepper, key) hex: the secret itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    uapk_ids: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Manifest(Base):
    """One version of one agent's manifest. (org_id, uapk_id, version) is unique."""

    __tablename__ = "manifests"
    __table_args__ = (
        UniqueConstraint("org_id", "uapk_id", "version", name="uq_manifest_version"),
        Index("ix_manifests_org_status", "org_id", "status"),
        Index("ix_manifests_org_uapk", "org_id", "uapk_id"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    uapk_id: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(64))
    team: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    document: Mapped[dict[str, Any]] = mapped_column(JSONType)
    manifest_hash: Mapped[str] = mapped_column(String(80))
    requested: Mapped[list[str]] = mapped_column(JSONType)
    approved: Mapped[list[str]] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_changed_by: Mapped[str] = mapped_column(String(254))
    approved_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rejected_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    rejected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    suspended_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reactivated_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    reactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)


class ManifestEvent(Base):
    """Every state change of a manifest: who, when, from what to what, why."""

    __tablename__ = "manifest_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    manifest_id: Mapped[str] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(36), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(254))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)


class Approval(Base):
    """An escalated action waiting for (or decided by) a human."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_org_status", "org_id", "status"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    uapk_id: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(String(200))
    capability: Mapped[str] = mapped_column(String(200))
    action: Mapped[dict[str, Any]] = mapped_column(JSONType)
    counterparty: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    action_hash: Mapped[str] = mapped_column(String(64))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    interaction_id: Mapped[str] = mapped_column(String(36))
    requested_by_key: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    override_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    override_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    override_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ChangeLog(Base):
    """A monotonically increasing counter per organization, bumped on every change that the
    gateway's in-memory state depends on (manifests, keys, policy). Gateways poll it off the
    hot path to catch up on a missed pub/sub message."""

    __tablename__ = "org_state"
    org_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CapabilityToken(Base):
    """Metadata of an issued capability token (never the token itself)."""

    __tablename__ = "capability_tokens"
    __table_args__ = (Index("ix_captokens_org", "org_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the JWT's jti
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    uapk_id: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(String(200))
    manifest_hash: Mapped[str] = mapped_column(String(80))
    capabilities: Mapped[list[str]] = mapped_column(JSONType)
    constraints: Mapped[dict[str, Any]] = mapped_column(JSONType)
    kid: Mapped[str] = mapped_column(String(64))
    issued_via: Mapped[str] = mapped_column(String(16))  # "gateway" (agent key) or "admin"
    issued_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    revoked_by: Mapped[str | None] = mapped_column(String(254), nullable=True)


class AuditEvent(Base):
    """One audit event, hash-chained per organization (store/audit.py; docs/audit.md).

    ``created_at`` is the exact RFC 3339 text that was hashed (fixed width, so it sorts)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("org_id", "seq", name="uq_audit_org_seq"),
        Index("ix_audit_org_created", "org_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(300), nullable=True)
    uapk_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    capability: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reasons: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    policy_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    interaction_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    params: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[str] = mapped_column(String(32))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The end of one organization's chain; appends lock this row (single writer per org)."""

    __tablename__ = "audit_heads"
    org_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditCheckpoint(Base):
    """A signed (head hash, seq, time) of one organization's chain. ``anchor``: retention
    pruned every event up to ``seq``; verification starts from here."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_cp_org_seq", "org_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    anchor: Mapped[bool] = mapped_column(Boolean, default=False)
    kid: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyRuleLine(Base):
    """One Casbin line of an organization's policy rules (policies/rules_model.conf), in the
    shape of Casbin's ``casbin_rule`` table: ``ptype`` and ``v0..v5``. ``ruleset`` is "live"
    or "shadow". Read and written through store.policy_rules.SQLAlchemyRuleAdapter."""

    __tablename__ = "policy_rules"
    __table_args__ = (Index("ix_policy_rules_org_set", "org_id", "ruleset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36))
    ruleset: Mapped[str] = mapped_column(String(16))
    ptype: Mapped[str] = mapped_column(String(8))
    v0: Mapped[str] = mapped_column(String(255), default="")
    v1: Mapped[str] = mapped_column(String(255), default="")
    v2: Mapped[str] = mapped_column(String(255), default="")
    v3: Mapped[str] = mapped_column(Text, default="")
    v4: Mapped[str] = mapped_column(String(255), default="")
    v5: Mapped[str] = mapped_column(String(255), default="")


class PolicyVersion(Base):
    """Every change of an organization's live rules: the whole rule set, who, when, why.
    ``kind`` "live" for versions, "shadow" for the deployed shadow candidate (one per org)."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("org_id", "kind", "version", name="uq_policy_versions_org_kind_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16), default="live")
    version: Mapped[int] = mapped_column(Integer)
    rules: Mapped[list[Any]] = mapped_column(JSONType)
    change: Mapped[str] = mapped_column(String(200))
    author: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyShadowDiff(Base):
    """A request on which the shadow rule set decided differently from the live one."""

    __tablename__ = "policy_shadow_diffs"
    __table_args__ = (Index("ix_policy_shadow_diffs_org", "org_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36))
    shadow_version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    uapk_id: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(String(200))
    capability: Mapped[str] = mapped_column(String(200))
    live_decision: Mapped[str] = mapped_column(String(16))
    shadow_decision: Mapped[str] = mapped_column(String(16))
    live_reasons: Mapped[list[Any]] = mapped_column(JSONType)
    shadow_reasons: Mapped[list[Any]] = mapped_column(JSONType)
    live_policy_version: Mapped[str] = mapped_column(String(80))
    action: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
