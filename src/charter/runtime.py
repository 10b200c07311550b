"""Assemble a running hub from a project folder: settings, store, router, services."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from charter.catalog import Project, load_project
from charter.engine.registry import Definitions, TaskHandler, load_tasks
from charter.engine.service import ProcessService
from charter.engine.triggers import EventBridge
from charter.errors import SchemaOutOfDate
from charter.governance.snapshot import Snapshot, SnapshotError, capture, materialized
from charter.hub import IngestLimits, IngestService, Router
from charter.store import SqlStore, current_revision, head_revision, upgrade
from charter.store.catalog import CatalogStore
from charter.store.processes import SqlProcessStore

DATABASE_ENV = "CHARTER_DATABASE_URL"
STATE_DIR = ".charter"


def database_url(project: Project, override: str | None = None) -> str:
    """The database: explicit, ``CHARTER_DATABASE_URL``, the project's, or SQLite in it."""
    if override:
        return override
    if os.environ.get(DATABASE_ENV):
        return os.environ[DATABASE_ENV]
    if project.settings.database_url:
        return project.settings.database_url
    state = project.root / STATE_DIR
    state.mkdir(exist_ok=True)
    return f"sqlite:///{(state / 'charter.db').resolve()}"


@dataclass(frozen=True)
class RunningCatalog:
    """What a hub runs: the catalog applied last, or the folder when nothing was ever applied.

    A folder that differs from the applied version is not run; it is what
    ``charter plan`` compares and ``charter apply`` makes current.
    """

    project: Project
    tasks: dict[str, TaskHandler]
    version: int | None = None  # the applied version; None: the folder, never applied
    folder_differs: bool = False

    def describe(self) -> str | None:
        """A line for an operator when what runs is not what the folder says, else None."""
        if self.version is None or not self.folder_differs:
            return None
        return (
            f"runs applied catalog version {self.version}; the project folder differs "
            "('charter plan' shows how, 'charter apply' makes it current)"
        )


def running_catalog(folder: Project, store: SqlStore) -> RunningCatalog:
    latest = CatalogStore(store).latest()
    if latest is None or latest.files is None:
        return RunningCatalog(folder, load_tasks(folder.root))
    snapshot = Snapshot(latest.files)
    try:
        differs = capture(folder.root).digest != snapshot.digest
    except SnapshotError:
        differs = True
    with materialized(snapshot) as root:
        applied = load_project(root)
        tasks = load_tasks(root)
    # Local state (the embedded database, locks) stays with the folder.
    return RunningCatalog(replace(applied, root=folder.root), tasks, latest.version, differs)


@dataclass
class Hub:
    """Everything a Charter process needs, built once and passed down (no globals)."""

    project: Project
    store: SqlStore
    router: Router
    ingest: IngestService
    processes: ProcessService
    tasks: dict[str, TaskHandler]
    url: str = field(default="")
    catalog: RunningCatalog | None = None

    @classmethod
    def open(
        cls,
        project_dir: Path | str,
        *,
        database: str | None = None,
        migrate: bool = True,
        limits: IngestLimits | None = None,
    ) -> Hub:
        project = load_project(project_dir)
        url = database_url(project, database)
        store = SqlStore.from_url(url)
        if migrate:
            upgrade(store.engine)
        elif current_revision(store.engine) != head_revision():
            store.close()
            raise SchemaOutOfDate(
                f"the database at {url.split('@')[-1]} is at revision "
                f"{current_revision(store.engine)!r}, not {head_revision()!r}",
                fix="run 'charter db upgrade'",
            )
        catalog = running_catalog(project, store)
        project = catalog.project
        router = Router(project)
        process_store = SqlProcessStore(store)
        store.append_extensions.append(process_store)
        processes = ProcessService(process_store, Definitions(project.processes, process_store))
        bridge = EventBridge(processes.definitions, processes.planner)
        return cls(
            project=project,
            store=store,
            router=router,
            ingest=IngestService(router, store, limits, bridge.annotate if bridge.active else None),
            processes=processes,
            tasks=catalog.tasks,
            catalog=catalog,
            url=url,
        )

    def close(self) -> None:
        self.ingest.close()
        self.processes.close()
        self.store.close()
