"""Persistence: SQLAlchemy models and repositories, Alembic migrations, Redis scripts. No HTTP."""
