"""Which database errors a worker waits out (`DatabaseUnavailable`: the database cannot be
reached, dropped the connection, or another program keeps its file locked) and which it
does not (the database refused what was asked: a table missing, a statement wrong)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from charter.errors import DatabaseUnavailable
from charter.store.sql_base import unavailable_errors


def test_a_sqlite_file_another_program_keeps_locked_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "charter.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (n INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            with unavailable_errors(), engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
        assert "cannot be written: database is locked" in str(raised.value)
        assert raised.value.fix is not None and "another program holds" in raised.value.fix
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()


def test_a_missing_sqlite_table_is_not_waited_out(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'charter.db'}")
    with pytest.raises(OperationalError, match="no such table"):
        with unavailable_errors(), engine.connect() as conn:
            conn.execute(text("SELECT * FROM nowhere"))
    engine.dispose()


def test_a_postgresql_server_that_does_not_answer_is_unavailable() -> None:
    # Nothing listens on port 1: the connection is refused.
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/postgres", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(DatabaseUnavailable, match="cannot be reached"):
        with unavailable_errors(), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    engine.dispose()


def test_a_postgresql_statement_refused_is_not_waited_out(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with pytest.raises(ProgrammingError, match="nowhere"):
        with unavailable_errors(), engine.connect() as conn:
            conn.execute(text("SELECT * FROM nowhere"))
    engine.dispose()
