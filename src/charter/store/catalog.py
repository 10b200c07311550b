"""Applied versions of a project's catalog, kept whole: who applied what, when and why.

Versions only grow: a rollback is a new version whose snapshot is an older
one's. Applying checks, in the same transaction that adds the version, that
the latest version is still the one the plan was made against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select, text

from charter.errors import Conflict, NotFound
from charter.store.schema import catalog_versions
from charter.store.sql import SqlStore

# Serialises applies on PostgreSQL (SQLite has one writer).
_APPLY_LOCK = 0x636861727465_01


@dataclass(frozen=True)
class AppliedVersion:
    version: int
    digest: str
    action: str
    based_on: int | None
    applied_at: float
    applied_by: str
    reason: str
    summary: dict[str, Any]
    changes: list[dict[str, Any]]
    files: dict[str, str] | None = None

    @property
    def approvals(self) -> dict[str, Any] | None:
        """Who approved this version and who was skipped (None before approvals were kept)."""
        found = self.summary.get("approvals")
        return found if isinstance(found, dict) else None

    def to_json(self) -> dict[str, Any]:
        found = {k: v for k, v in vars(self).items() if k != "files"}
        return found | {"approvals": self.approvals}


def _version(row: Any, with_files: bool) -> AppliedVersion:
    return AppliedVersion(
        version=row.version,
        digest=row.digest,
        action=row.action,
        based_on=row.based_on,
        applied_at=row.applied_at,
        applied_by=row.applied_by,
        reason=row.reason,
        summary=orjson.loads(row.summary),
        changes=orjson.loads(row.changes),
        files=orjson.loads(row.snapshot) if with_files else None,
    )


class CatalogStore:
    """The ``catalog_versions`` table of the hub's database."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def latest(self, with_files: bool = True) -> AppliedVersion | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(catalog_versions).order_by(catalog_versions.c.version.desc()).limit(1)
            ).first()
        return _version(row, with_files) if row is not None else None

    def get(self, version: int) -> AppliedVersion:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(catalog_versions).where(catalog_versions.c.version == version)
            ).first()
        if row is None:
            raise NotFound(
                f"there is no applied catalog version {version}",
                fix="list them with 'charter history'",
            )
        return _version(row, True)

    def history(self, limit: int = 50) -> list[AppliedVersion]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(catalog_versions).order_by(catalog_versions.c.version.desc()).limit(limit)
            ).all()
        return [_version(r, False) for r in rows]

    def snapshots(self) -> list[dict[str, str]]:
        """The files of every applied version, oldest first (for transitive schema checks)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(catalog_versions.c.snapshot).order_by(catalog_versions.c.version)
            ).scalars()
            return [orjson.loads(row) for row in rows]

    def append(
        self,
        *,
        expected: int | None,
        digest: str,
        files: dict[str, str],
        action: str,
        by: str,
        reason: str,
        summary: dict[str, Any],
        changes: list[dict[str, Any]],
    ) -> int:
        """Add the next version, if the latest is still ``expected``; returns its number."""
        with self.store._write() as conn:
            if self.store.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPLY_LOCK})
            latest = conn.execute(select(func.max(catalog_versions.c.version))).scalar()
            if latest != expected:
                raise Conflict(
                    f"the applied catalog is at version {latest}, but the plan was made "
                    f"against version {expected}",
                    fix="make a new plan with 'charter plan --out FILE' and apply that",
                )
            version = (latest or 0) + 1
            conn.execute(
                catalog_versions.insert(),
                {
                    "version": version,
                    "digest": digest,
                    "action": action,
                    "based_on": latest,
                    "applied_at": self.store._now(conn),
                    "applied_by": by,
                    "reason": reason,
                    "summary": orjson.dumps(summary).decode(),
                    "changes": orjson.dumps(changes).decode(),
                    "snapshot": orjson.dumps(files).decode(),
                },
            )
        return version
