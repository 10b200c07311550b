"""What the SQL store's parts share: the engine, write transactions, the database clock.

The dialect comes from the URL. SQLite runs in WAL mode with ``synchronous=FULL``
and write transactions that start with ``BEGIN IMMEDIATE``; one process owns
the file. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` and reads lease
time from the database clock, so any number of processes on any hosts can share it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Float, create_engine, event, func, literal, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

from charter.errors import DatabaseUnavailable, StoreError, WriteRolledBack
from charter.store.protocol import IngestBatch, NewEvent

log = logging.getLogger("charter.store")
T = TypeVar("T")


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` with Charter's durability settings."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from pysqlite so BEGIN IMMEDIATE can be issued.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql+"):
        engine = create_engine(url, pool_size=10, max_overflow=10)
        _ping_when_idle(engine)
        return engine
    raise StoreError(
        f"unsupported database URL {url.split('://')[0]!r}",
        fix="use sqlite:///path/to/charter.db or postgresql://user@host/db",
    )


# A pooled connection idle this long is pinged before use (a database restart leaves
# it dead); one in steady use is not, which saves a round trip on every transaction.
IDLE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling (``pool_pre_ping``), for connections
    that have been idle at least `IDLE_PING_S`: a dead one is replaced before use."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out another (a new one).
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


# What PostgreSQL rolls back so that another transaction can go on: deadlock_detected and
# serialization_failure (see `WriteRolledBack`).
_ROLLED_BACK_FOR_ANOTHER = frozenset({"40P01", "40001"})
# How many times `retried` runs a write that keeps being rolled back for another.
WRITE_ATTEMPTS = 3


def retried(write: Callable[[], T]) -> T:
    """``write()``, run again (up to `WRITE_ATTEMPTS` times in all, a few milliseconds
    apart) while the database rolls it back in favour of another transaction: two workers
    writing some of the same instances, say. ``write`` must be one transaction, or one
    statement in autocommit."""
    attempt = 1
    while True:
        try:
            return write()
        except WriteRolledBack as exc:
            if attempt >= WRITE_ATTEMPTS:
                raise
            log.info("write rolled back for another transaction (attempt %d): %s", attempt, exc)
            time.sleep(random.uniform(0.0, 0.02 * attempt))
            attempt += 1


# PostgreSQL's SQLSTATEs of a lost server: an administrator's or a crash's shutdown, and
# a server starting up; with the connection exceptions (class 08) and client-side errors
# (no SQLSTATE: the server could not be reached), `DatabaseUnavailable`.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})
# SQLite's result codes of a file another program keeps locked past the busy timeout.
_SQLITE_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


def _unreachable(exc: DBAPIError) -> bool:
    """Whether ``exc`` says the database could not be reached or dropped the connection,
    rather than that it refused what was asked."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    if isinstance(exc.orig, sqlite3.Error):
        return getattr(exc.orig, "sqlite_errorname", None) in _SQLITE_BUSY
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _SERVER_GONE


@contextmanager
def unavailable_errors() -> Iterator[None]:
    """A lost or unreachable database as :class:`DatabaseUnavailable`, so that a worker
    can wait and try again; any other error as it is."""
    try:
        yield
    except DBAPIError as exc:
        if not _unreachable(exc):
            raise
        locked = isinstance(exc.orig, sqlite3.Error)
        raise DatabaseUnavailable(
            f"the database cannot be {'written' if locked else 'reached'}: "
            f"{' '.join(str(exc.orig).split())}",
            fix=(
                "another program holds the database file's lock; end its transaction"
                if locked
                else "check that the database server is up and reachable"
            )
            + "; workers wait and try again on their own",
        ) from exc


class Reconnect:
    """How long a worker that cannot reach the database waits before it tries again: the
    first wait, doubled after each failure up to the last, and the first again once the
    database answers."""

    def __init__(self, log: logging.Logger, first: float = 0.1, last: float = 5.0) -> None:
        self.log = log
        self.first = self.wait = first
        self.last = last

    async def pause(self, exc: DatabaseUnavailable, stopping: asyncio.Event) -> None:
        """Wait (less if ``stopping`` is set meanwhile) after ``exc``, which is logged."""
        self.log.warning("trying again in %.1fs: %s", self.wait, exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), self.wait)
        self.wait = min(2 * self.wait, self.last)

    def reached(self) -> None:
        self.wait = self.first


@contextmanager
def _write_errors() -> Iterator[None]:
    """The driver's errors of a write as :class:`StoreError`, with the fix."""
    try:
        with unavailable_errors():
            yield
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) in _ROLLED_BACK_FOR_ANOTHER:
            raise WriteRolledBack(
                f"the database rolled back a write in favour of another: {exc.orig}",
                fix="run it again; if it keeps happening, fewer workers on the same "
                "instances will help",
            ) from exc
        raise StoreError(
            f"the database refused a write: {exc.orig}",
            fix="check that the database is up and migrated ('charter db upgrade')",
        ) from exc
    except IntegrityError as exc:
        raise StoreError(
            f"the write breaks a constraint of the store: {exc.orig}",
            fix="this is a bug in the caller; report it with the request that caused it",
        ) from exc


class AppendExtension(Protocol):
    """Work done inside the transaction that appends events."""

    def before_append(self, conn: Connection, batches: list[IngestBatch]) -> None: ...

    def after_append(self, conn: Connection, events: list[NewEvent], now: float) -> None: ...


def row_dict(mapping: Any) -> dict[str, Any]:
    """A result row as a plain dict."""
    # Column keys are SQLAlchemy's quoted_name, a str subclass JSON encoders refuse.
    return {str(key): value for key, value in mapping.items()}


class SqlBase:
    """The engine and transactions every part of :class:`~charter.store.sql.SqlStore` uses."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer; queueing writers in-process avoids busy-wait storms.
        self._write_lock = threading.Lock() if not self.is_postgres else None
        # Reads on PostgreSQL run in autocommit: a read is then one round trip, not a BEGIN,
        # the read and a ROLLBACK. (Under READ COMMITTED every statement reads its own
        # snapshot anyway, in a transaction or not.)
        self.reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else engine
        )
        # Work that must commit with appended events (process triggers and waits).
        self.append_extensions: list[AppendExtension] = []

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with _write_errors():
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield conn
            else:
                with self._write_lock, self.engine.begin() as conn:
                    yield conn

    def _write_alone(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """A write that is one statement (PostgreSQL), run in autocommit: it is then its own
        transaction, one round trip with no BEGIN or COMMIT of its own. Its rows."""
        with _write_errors(), self.reader.connect() as conn:
            return list(conn.exec_driver_sql(statement, params))

    def _now(self, conn: Connection) -> float:
        if self.is_postgres:
            return float(
                conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            )
        return time.time()

    def _clock(self) -> Any:
        """The database clock as a SQL expression, for a statement that compares with it
        or stores it without reading it first: PostgreSQL's time of the statement; on
        SQLite, where one process owns the file, this process's clock."""
        if self.is_postgres:
            return func.extract("epoch", func.statement_timestamp())
        return literal(time.time(), Float)

    def _insert_ignore(self, table: Any) -> Any:
        if self.is_postgres:
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()
