"""Configuration defaults and validation, and the suite's own service check."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import ConfigError, load_settings


def test_defaults_are_the_embedded_single_process_server() -> None:
    s = load_settings({"HOME": "/home/ann"})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    # An absolute default, whatever the working directory (tests/foundation/test_fixes_accounts.py).
    assert s.data_dir == Path("/home/ann/.local/share/bastion")
    assert s.database_url == "sqlite+aiosqlite:////home/ann/.local/share/bastion/bastion.db"
    assert s.redis_url is None and s.embedded and s.is_sqlite
    assert (s.gateway_max_body, s.api_max_body) == (64 * 1024, 1024 * 1024)
    assert s.log_level == "INFO" and s.rate_limits_enabled


def test_environment_values_are_parsed() -> None:
    s = load_settings(
        {
            "BASTION_HOST": "0.0.0.0",
            "BASTION_PORT": "9000",
            "BASTION_WORKERS": "4",
            "BASTION_DATABASE_URL": "postgresql+asyncpg://bastion:secret@db:5432/bastion",
            "BASTION_REDIS_URL": "redis://cache:6379/0",
            "BASTION_DATA_DIR": "/var/lib/bastion",
            "BASTION_LOG_LEVEL": "debug",
        }
    )
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 9000, 4)
    assert s.database_url.startswith("postgresql+asyncpg://") and not s.is_sqlite
    assert s.redis_url == "redis://cache:6379/0" and not s.embedded
    assert s.data_dir == Path("/var/lib/bastion") and s.log_level == "DEBUG"


def test_data_dir_moves_the_default_database() -> None:
    s = load_settings({"BASTION_DATA_DIR": "/srv/b"})
    assert s.database_url == "sqlite+aiosqlite:////srv/b/bastion.db"
    assert load_settings({}, data_dir="/tmp/x").data_dir == Path("/tmp/x")


def test_empty_redis_url_means_embedded() -> None:
    assert load_settings({"BASTION_REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize(
    "env,var",
    [
        ({"BASTION_PORT": "0"}, "BASTION_PORT"),
        ({"BASTION_PORT": "x"}, "BASTION_PORT"),
        ({"BASTION_WORKERS": "2"}, "BASTION_WORKERS"),
        ({"BASTION_DATABASE_URL": "sqlite:///x.db"}, "BASTION_DATABASE_URL"),
        ({"BASTION_REDIS_URL": "localhost:6379"}, "BASTION_REDIS_URL"),
        ({"BASTION_HOST": ""}, "BASTION_HOST"),
        ({"BASTION_GATEWAY_MAX_BODY": "1"}, "BASTION_GATEWAY_MAX_BODY"),
        ({"BASTION_BOOTSTRAP_ORG_SLUG": "a"}, "BASTION_BOOTSTRAP_ORG_SLUG"),
    ],
)
def test_bad_values_raise_one_line_naming_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    text = str(info.value)
    assert text.startswith(var) and "\n" not in text


def test_several_workers_are_fine_with_redis() -> None:
    s = load_settings({"BASTION_WORKERS": "3", "BASTION_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert s.workers == 3


def test_every_variable_is_documented() -> None:
    from core.settings import _SPEC

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [var for var in _SPEC if f"`{var}`" not in doc]
    assert not missing, f"undocumented in docs/configuration.md: {missing}"


# --- the suite's own check of Redis and PostgreSQL ------------------------------------------
def _sessionstart_exit(monkeypatch: pytest.MonkeyPatch, down: set[int], ci: bool) -> tuple[str, int] | None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "_reachable", lambda host, port: port not in down)
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    try:
        conftest.pytest_sessionstart(None)  # type: ignore[arg-type]
    except pytest.exit.Exception as exc:  # type: ignore[attr-defined]
        return str(exc.msg), int(exc.returncode)
    return None


def test_suite_fails_at_once_naming_the_unreachable_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    assert _sessionstart_exit(monkeypatch, set(), ci=True) is None
    msg, code = _sessionstart_exit(monkeypatch, {conftest.REDIS_PORT}, ci=True)  # type: ignore[misc]
    assert code != 0 and "Redis" in msg and "PostgreSQL" not in msg and msg.startswith("CI")
    msg, code = _sessionstart_exit(monkeypatch, {conftest.PG_PORT}, ci=True)  # type: ignore[misc]
    assert code != 0 and "PostgreSQL" in msg and "Redis" not in msg
    msg, code = _sessionstart_exit(monkeypatch, {conftest.PG_PORT, conftest.REDIS_PORT}, ci=False)  # type: ignore[misc]
    assert code != 0 and "PostgreSQL" in msg and "Redis" in msg


def test_config_errors_never_echo_secrets() -> None:
    for env in (
        {"BASTION_DATABASE_URL": "mysql://admin:hunter2-secret@db/x"},
        {"BASTION_REDIS_URL": "http://:hunter2-secret@cache:6379"},
        {"BASTION_API_KEY_PEPPER": "hunter2-secret"},  # too short: 14 characters
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        assert "hunter2" not in str(info.value)
        assert str(info.value).startswith(next(iter(env)))


def test_pepper_and_data_dir_validation() -> None:
    assert load_settings({"BASTION_API_KEY_PEPPER": "x" * 16}).api_key_pepper == "x" * 16
    assert load_settings({"BASTION_API_KEY_PEPPER": ""}).api_key_pepper is None
    with pytest.raises(ConfigError, match="^BASTION_DATA_DIR"):
        load_settings({"BASTION_DATA_DIR": ""})
