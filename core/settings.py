"""Configuration from BASTION_* environment variables.

Every variable is read once, validated, and a bad value stops start-up with one line that
names the variable (``ConfigError``). The README lists them all.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A BASTION_* variable has a value we cannot use. ``str(exc)`` is the one line to print."""


def _int(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _bool(name: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")

    return parse


def _scheme(raw: str) -> str:
    """What to show of a bad URL: its scheme only (the rest may hold a password)."""
    return repr(raw.split("://", 1)[0] + "://...") if "://" in raw else "a value without a scheme"


def _db_url(name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.startswith("sqlite+aiosqlite://") or raw.startswith("postgresql+asyncpg://"):
            return raw
        raise ConfigError(
            f"{name}: must start with sqlite+aiosqlite:// or postgresql+asyncpg://, got {_scheme(raw)}"
        )

    return parse


def _redis_url(name: str) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        if raw == "":
            return None
        if raw.startswith(("redis://", "rediss://", "unix://")):
            return raw
        raise ConfigError(f"{name}: must start with redis://, rediss:// or unix://, got {_scheme(raw)}")

    return parse


def _host(name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw or any(c.isspace() for c in raw):
            raise ConfigError(f"{name}: not a host name or address: {raw!r}")
        return raw

    return parse


def _str(name: str) -> Callable[[str], str]:
    return lambda raw: raw


def _path(name: str) -> Callable[[str], Path]:
    def parse(raw: str) -> Path:
        if not raw.strip():
            raise ConfigError(f"{name}: must not be empty")
        return Path(raw)

    return parse


def _secret(name: str, min_len: int) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        if raw == "":
            return None
        if len(raw) < min_len:
            # Never echo a secret back, not even a bad one.
            raise ConfigError(f"{name}: must be at least {min_len} characters (got {len(raw)})")
        return raw

    return parse


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Absolute, so that every command finds the same database whatever its working directory
    # (load_settings resolves BASTION_DATA_DIR, or this default, once).
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    database_url: str = ""
    redis_url: str | None = None
    # Every Redis call on a request path (quotas, audit hand-over, rate limits) gives up after
    # this long and answers 503: a frozen Redis must fail closed fast, not stall requests.
    redis_timeout_ms: int = 250
    # Request body caps (bytes).
    gateway_max_body: int = 64 * 1024
    api_max_body: int = 1024 * 1024
    # Management API rate-limit tiers: per credential (API key, or user), per minute, with a
    # burst per 10 s. The emergency tier (revocations, suspension) has buckets of its own.
    rate_standard_per_minute: int = 600
    rate_standard_burst: int = 100
    rate_heavy_per_minute: int = 60
    rate_heavy_burst: int = 20
    rate_emergency_per_minute: int = 600
    rate_emergency_burst: int = 100
    rate_limits_enabled: bool = True
    # Optional per-API-key ceiling on the gateway decision endpoints (0 = off).
    gateway_key_per_minute: int = 0
    # Session tokens (login).
    session_ttl_seconds: int = 3600
    # Login: failed attempts from all addresses per minute before repeat offenders are refused,
    # and how many password hashes (scrypt, ~16 MiB each) run at once.
    login_failures_per_minute: int = 600
    login_hash_concurrency: int = 4
    # Web console sessions (docs/console.md): signed out after this long without a request, and
    # in any case this long after signing in.
    console_idle_timeout_seconds: int = 30 * 60
    console_absolute_timeout_seconds: int = 12 * 3600
    # Peers whose X-Forwarded-For names the client (IPs or CIDR networks); empty = ignore it.
    trusted_proxies: tuple[str, ...] = ()
    # Defaults applied when a manifest defines no quota.
    default_max_actions_per_hour: int = 1000
    default_max_actions_per_day: int = 10000
    # Approvals and override tokens.
    approval_ttl_seconds: int = 24 * 3600
    override_token_ttl_seconds: int = 300
    # Most pending approvals one agent may hold (also never more than its remaining daily quota).
    max_pending_approvals: int = 20
    # Four eyes: the credential that requested an action (and the user who owns it) may not
    # decide its approval.
    approval_four_eyes: bool = True
    # Capability tokens: default and maximum lifetime.
    capability_token_ttl_seconds: int = 900
    capability_token_max_ttl_seconds: int = 24 * 3600
    # Keys: a PEM file path for the signing key in production; unset = generated under data_dir.
    signing_key_file: str | None = None
    api_key_pepper: str | None = None
    issuer: str = "bastion"
    # Audit trail: action params in events (else only their hash), retention (0 = forever),
    # a signed checkpoint every N events.
    audit_include_params: bool = False
    audit_retention_days: int = 0
    audit_checkpoint_every: int = 100
    log_level: str = "INFO"
    bootstrap_org_slug: str | None = None
    bootstrap_org_name: str | None = None
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: counters and the change bus live in-process."""
        return self.redis_url is None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_SPEC: dict[str, tuple[str, Callable[[str], object]]] = {
    "BASTION_HOST": ("host", _host("BASTION_HOST")),
    "BASTION_PORT": ("port", _int("BASTION_PORT", 1, 65535)),
    "BASTION_WORKERS": ("workers", _int("BASTION_WORKERS", 1, 64)),
    "BASTION_DATA_DIR": ("data_dir", _path("BASTION_DATA_DIR")),
    "BASTION_DATABASE_URL": ("database_url", _db_url("BASTION_DATABASE_URL")),
    "BASTION_REDIS_URL": ("redis_url", _redis_url("BASTION_REDIS_URL")),
    "BASTION_REDIS_TIMEOUT_MS": ("redis_timeout_ms", _int("BASTION_REDIS_TIMEOUT_MS", 10, 30_000)),
    "BASTION_GATEWAY_MAX_BODY": ("gateway_max_body", _int("BASTION_GATEWAY_MAX_BODY", 1024, 16 << 20)),
    "BASTION_API_MAX_BODY": ("api_max_body", _int("BASTION_API_MAX_BODY", 1024, 64 << 20)),
    "BASTION_RATE_STANDARD_PER_MINUTE": ("rate_standard_per_minute", _int("BASTION_RATE_STANDARD_PER_MINUTE", 1, 10**7)),
    "BASTION_RATE_STANDARD_BURST": ("rate_standard_burst", _int("BASTION_RATE_STANDARD_BURST", 1, 10**7)),
    "BASTION_RATE_HEAVY_PER_MINUTE": ("rate_heavy_per_minute", _int("BASTION_RATE_HEAVY_PER_MINUTE", 1, 10**7)),
    "BASTION_RATE_HEAVY_BURST": ("rate_heavy_burst", _int("BASTION_RATE_HEAVY_BURST", 1, 10**7)),
    "BASTION_RATE_EMERGENCY_PER_MINUTE": ("rate_emergency_per_minute", _int("BASTION_RATE_EMERGENCY_PER_MINUTE", 60, 10**7)),
    "BASTION_RATE_EMERGENCY_BURST": ("rate_emergency_burst", _int("BASTION_RATE_EMERGENCY_BURST", 10, 10**7)),
    "BASTION_RATE_LIMITS_ENABLED": ("rate_limits_enabled", _bool("BASTION_RATE_LIMITS_ENABLED")),
    "BASTION_GATEWAY_KEY_PER_MINUTE": ("gateway_key_per_minute", _int("BASTION_GATEWAY_KEY_PER_MINUTE", 0, 10**8)),
    "BASTION_SESSION_TTL_SECONDS": ("session_ttl_seconds", _int("BASTION_SESSION_TTL_SECONDS", 60, 7 * 86400)),
    "BASTION_LOGIN_FAILURES_PER_MINUTE": ("login_failures_per_minute", _int("BASTION_LOGIN_FAILURES_PER_MINUTE", 1, 10**7)),
    "BASTION_LOGIN_HASH_CONCURRENCY": ("login_hash_concurrency", _int("BASTION_LOGIN_HASH_CONCURRENCY", 1, 256)),
    "BASTION_CONSOLE_IDLE_TIMEOUT_SECONDS": ("console_idle_timeout_seconds", _int("BASTION_CONSOLE_IDLE_TIMEOUT_SECONDS", 60, 7 * 86400)),
    "BASTION_CONSOLE_ABSOLUTE_TIMEOUT_SECONDS": ("console_absolute_timeout_seconds", _int("BASTION_CONSOLE_ABSOLUTE_TIMEOUT_SECONDS", 60, 30 * 86400)),
    "BASTION_TRUSTED_PROXIES": ("trusted_proxies", lambda raw: _networks("BASTION_TRUSTED_PROXIES", raw)),
    "BASTION_DEFAULT_MAX_ACTIONS_PER_HOUR": ("default_max_actions_per_hour", _int("BASTION_DEFAULT_MAX_ACTIONS_PER_HOUR", 1, 10**9)),
    "BASTION_DEFAULT_MAX_ACTIONS_PER_DAY": ("default_max_actions_per_day", _int("BASTION_DEFAULT_MAX_ACTIONS_PER_DAY", 1, 10**9)),
    "BASTION_APPROVAL_TTL_SECONDS": ("approval_ttl_seconds", _int("BASTION_APPROVAL_TTL_SECONDS", 60, 30 * 86400)),
    "BASTION_OVERRIDE_TOKEN_TTL_SECONDS": ("override_token_ttl_seconds", _int("BASTION_OVERRIDE_TOKEN_TTL_SECONDS", 10, 86400)),
    "BASTION_MAX_PENDING_APPROVALS": ("max_pending_approvals", _int("BASTION_MAX_PENDING_APPROVALS", 1, 100_000)),
    "BASTION_APPROVAL_FOUR_EYES": ("approval_four_eyes", _bool("BASTION_APPROVAL_FOUR_EYES")),
    "BASTION_CAPABILITY_TOKEN_TTL_SECONDS": ("capability_token_ttl_seconds", _int("BASTION_CAPABILITY_TOKEN_TTL_SECONDS", 10, 30 * 86400)),
    "BASTION_CAPABILITY_TOKEN_MAX_TTL_SECONDS": ("capability_token_max_ttl_seconds", _int("BASTION_CAPABILITY_TOKEN_MAX_TTL_SECONDS", 10, 30 * 86400)),
    "BASTION_SIGNING_KEY_FILE": ("signing_key_file", _str("BASTION_SIGNING_KEY_FILE")),
    "BASTION_API_KEY_PEPPER": ("api_key_pepper", _secret("BASTION_API_KEY_PEPPER", 16)),
    "BASTION_ISSUER": ("issuer", _host("BASTION_ISSUER")),
    "BASTION_AUDIT_INCLUDE_PARAMS": ("audit_include_params", _bool("BASTION_AUDIT_INCLUDE_PARAMS")),
    "BASTION_AUDIT_RETENTION_DAYS": ("audit_retention_days", _int("BASTION_AUDIT_RETENTION_DAYS", 0, 100 * 366)),
    "BASTION_AUDIT_CHECKPOINT_EVERY": ("audit_checkpoint_every", _int("BASTION_AUDIT_CHECKPOINT_EVERY", 1, 10**6)),
    "BASTION_LOG_LEVEL": ("log_level", lambda raw: _level(raw)),
    "BASTION_BOOTSTRAP_ORG_SLUG": ("bootstrap_org_slug", _str("BASTION_BOOTSTRAP_ORG_SLUG")),
    "BASTION_BOOTSTRAP_ORG_NAME": ("bootstrap_org_name", _str("BASTION_BOOTSTRAP_ORG_NAME")),
    "BASTION_BOOTSTRAP_ADMIN_EMAIL": ("bootstrap_admin_email", _str("BASTION_BOOTSTRAP_ADMIN_EMAIL")),
    "BASTION_BOOTSTRAP_ADMIN_PASSWORD": ("bootstrap_admin_password", _str("BASTION_BOOTSTRAP_ADMIN_PASSWORD")),
}


def _networks(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR networks (``10.0.0.0/8``, ``::1``)."""
    import ipaddress

    out: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{name}: not an IP address or network: {item!r}") from None
    return tuple(out)


def _level(raw: str) -> str:
    up = raw.upper()
    if up not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"BASTION_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR, got {raw!r}")
    return up


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Where the embedded database, signing keys and pepper live when BASTION_DATA_DIR is unset:
    ``$XDG_DATA_HOME/bastion``, else ``~/.local/share/bastion`` (the XDG base-directory
    default), else ``/var/lib/bastion`` for a user without a home directory. Never relative to
    the working directory: ``bastion bootstrap`` run from another folder must not create a
    second database there."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "bastion"
    home = env.get("HOME", "")
    if not (home and Path(home).is_absolute()):
        try:
            home = str(Path.home())
        except (RuntimeError, KeyError):
            home = ""
    if home and Path(home).is_absolute():
        return Path(home) / ".local" / "share" / "bastion"
    return Path("/var/lib/bastion")


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from ``env`` (default ``os.environ``); keyword overrides win (tests)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for var, (attr, parse) in _SPEC.items():
        if var in env:
            values[attr] = parse(env[var])
    values.update(overrides)
    raw_dir = values.get("data_dir")
    data_dir = Path(raw_dir).expanduser().absolute() if raw_dir else default_data_dir(env)  # type: ignore[arg-type]
    values["data_dir"] = data_dir
    if not values.get("database_url"):
        values["database_url"] = f"sqlite+aiosqlite:///{data_dir / 'bastion.db'}"
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.embedded and settings.workers > 1:
        raise ConfigError(
            "BASTION_WORKERS: more than one worker needs BASTION_REDIS_URL "
            "(in-process counters cannot be shared between processes)"
        )
    if settings.bootstrap_org_slug and not (
        settings.bootstrap_org_name and settings.bootstrap_admin_email and settings.bootstrap_admin_password
    ):
        raise ConfigError(
            "BASTION_BOOTSTRAP_ORG_SLUG: also set BASTION_BOOTSTRAP_ORG_NAME, "
            "BASTION_BOOTSTRAP_ADMIN_EMAIL and BASTION_BOOTSTRAP_ADMIN_PASSWORD"
        )
    return settings
