"""Apply Alembic migrations programmatically (``bastion migrate`` and start-up)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url)
    return cfg


def upgrade(database_url: str) -> None:
    """Bring the schema to the newest revision(s). Safe to run repeatedly (Alembic tracks it).
    "heads": branches developed in parallel apply even before they are merged."""
    command.upgrade(alembic_config(database_url), "heads")
