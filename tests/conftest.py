"""Shared fixtures: projects, databases (SQLite and PostgreSQL), running hubs."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from charter.store import SqlStore, upgrade

DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
PG_ADMIN = os.environ.get("CHARTER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def copy_starter(directory: Path) -> Path:
    """The starter project (what ``charter init`` writes) in ``directory``."""
    template = resources.files("charter") / "templates" / "starter"
    with resources.as_file(template) as source:
        shutil.copytree(source, directory, dirs_exist_ok=True)
    return directory


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return copy_starter(tmp_path / "project")


def _pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def pg_template(worker_id: str) -> Iterator[str]:
    """A migrated template database, made once per test process."""
    name = f"charter_tpl_{worker_id}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    store = SqlStore.from_url(_pg_url(name))
    upgrade(store.engine)
    store.close()
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(DROP.format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"charter_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(pg_template)
            )
        )
    yield _pg_url(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(DROP.format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'charter.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    s = SqlStore.from_url(db_url)
    upgrade(s.engine)
    yield s
    s.close()
