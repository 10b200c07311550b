"""A project as data: the files that make it, and the catalog objects they define.

A snapshot is what ``charter apply`` stores and what a hub runs once a
project has been applied: the text of every file the loader reads (YAML,
JSON schemas, ``tasks.py``), keyed by path relative to the project root. Its
digest names it. ``objects`` turns a loaded project into a flat, ordered
view, one JSON object per catalog object, which is what plans compare.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from charter.catalog import Project, load_project
from charter.errors import CharterError

# What a project's behaviour depends on; the hub's own state lives in dot-folders.
SNAPSHOT_SUFFIXES = (".yaml", ".yml", ".json")
TASKS_FILE = "tasks.py"
MAX_FILE_BYTES = 2 * 1024 * 1024


class SnapshotError(CharterError):
    """A project folder that cannot be captured as a snapshot."""


@dataclass(frozen=True)
class Snapshot:
    """The files of a project: relative path -> text."""

    files: dict[str, str]

    @property
    def digest(self) -> str:
        body = orjson.dumps(self.files, option=orjson.OPT_SORT_KEYS)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def to_json(self) -> dict[str, str]:
        return dict(sorted(self.files.items()))

    @classmethod
    def from_json(cls, data: Any) -> Snapshot:
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise SnapshotError(
                "a snapshot must be an object from file path to file text",
                fix="make the plan again with 'charter plan --out FILE'",
            )
        return cls(dict(data))


def capture(root: Path | str) -> Snapshot:
    """The files of the project at ``root`` (dot-folders, such as ``.charter``, left out)."""
    root = Path(root)
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix not in SNAPSHOT_SUFFIXES and relative.as_posix() != TASKS_FILE:
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SnapshotError(
                f"{relative} is over {MAX_FILE_BYTES // 2**20} MiB",
                fix="keep large data out of the project folder",
            )
        try:
            files[relative.as_posix()] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SnapshotError(
                f"{relative} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                fix="save the file as UTF-8",
            ) from exc
    return Snapshot(files)


@contextmanager
def materialized(snapshot: Snapshot) -> Iterator[Path]:
    """The snapshot written out as a project folder, for as long as the context lasts."""
    with tempfile.TemporaryDirectory(prefix="charter-applied-") as folder:
        root = Path(folder)
        for name, text in snapshot.files.items():
            path = (root / name).resolve()
            if not path.is_relative_to(root.resolve()):
                raise SnapshotError(
                    f"snapshot path {name!r} leads outside the project",
                    fix="make the plan again from the project folder",
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        yield root


def load_snapshot(snapshot: Snapshot) -> Project:
    """The project a snapshot defines, validated like a folder."""
    with materialized(snapshot) as root:
        return load_project(root)


def objects(project: Project) -> dict[str, dict[str, Any]]:
    """Every catalog object as JSON, keyed ``kind/name`` (``kind/name@version`` if versioned).

    Schemas appear resolved (a schema file's content, not its path), so a change to a
    schema file shows as a change to the object that uses it.
    """
    found: dict[str, dict[str, Any]] = {}
    for name, team in project.teams.items():
        found[f"team/{name}"] = team.model_dump(mode="json", by_alias=True)
    for name, domain in project.domains.items():
        found[f"domain/{name}"] = domain.model_dump(mode="json", by_alias=True)
    for name, system in project.systems.items():
        found[f"system/{name}"] = system.model_dump(mode="json", by_alias=True)
    for (name, version), entity in project.entities.items():
        found[f"entity/{name}@{version}"] = entity.model_dump(mode="json", by_alias=True)
    for (name, version), mapping in project.mappings.items():
        found[f"mapping/{name}@{version}"] = mapping.model_dump(mode="json", by_alias=True)
    for name, integration in project.integrations.items():
        found[f"integration/{name}"] = integration.model_dump(mode="json", by_alias=True)
    for (name, version), process in project.processes.items():
        found[f"process/{name}@{version}"] = process.model_dump(mode="json", by_alias=True)
    found["project/settings"] = project.settings.model_dump(mode="json", by_alias=True)
    return dict(sorted(found.items()))
