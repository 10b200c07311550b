"""Alembic migrations of Charter's store."""
