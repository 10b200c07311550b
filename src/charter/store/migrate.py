"""Bring a database to the schema this version of Charter needs (Alembic, no ini file)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from charter.errors import StoreError

SCRIPT_LOCATION = "charter.store:migrations"
# Any fixed number: serialises concurrent upgrades of one PostgreSQL database.
_UPGRADE_LOCK = 7_301_120_401


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


@contextmanager
def _reachable(engine: Engine) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise StoreError(
            f"cannot use the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{' '.join(str(exc.orig).split())}",
            fix="check CHARTER_DATABASE_URL and that the database server is up",
        ) from exc


def current_revision(engine: Engine) -> str | None:
    with _reachable(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply pending migrations; safe to call from several processes at once."""
    config = _config()
    with _reachable(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
