"""Where definitions and task handlers come from: the project, and the store for old versions."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from charter.engine.definition import Definition
from charter.engine.spec import ProcessSpec
from charter.errors import CatalogError, NotFound, Problem
from charter.store.processes import SqlProcessStore

TASKS_FILE = "tasks.py"
TaskHandler = Callable[..., Any]


class Definitions:
    """Compiled definitions by (name, version).

    The project's definitions are saved in the store on first use, so an
    instance keeps running on the version it started with after the project
    moves on to a newer one.
    """

    def __init__(self, specs: dict[tuple[str, int], ProcessSpec], store: SqlProcessStore) -> None:
        self.store = store
        self._specs = specs
        self._compiled: dict[tuple[str, int], Definition] = {}
        self._saved: set[tuple[str, int]] = set()
        # The newest version of each process, which every start looks up.
        self._latest: dict[str, int] = {}
        for n, v in specs:
            self._latest[n] = max(v, self._latest.get(n, v))

    def latest(self, name: str) -> Definition:
        version = self._latest.get(name)
        if version is None:
            known = ", ".join(sorted({n for n, _ in self._specs})) or "none"
            raise NotFound(f"there is no process {name!r}", fix=f"use one of: {known}")
        return self.get(name, version)

    def get(self, name: str, version: int) -> Definition:
        key = (name, version)
        found = self._compiled.get(key)
        if found is not None:
            return found
        spec = self._specs.get(key)
        if spec is None:
            stored = self.store.load_definition(name, version)
            if stored is None:
                raise NotFound(
                    f"process {name} version {version} is neither in the project nor stored",
                    fix="restore that version in the project",
                )
            spec = ProcessSpec.model_validate(orjson.loads(stored))
        definition = Definition(spec)
        self._compiled[key] = definition
        return definition

    def remember(self, definition: Definition) -> None:
        """Store the definition an instance is about to start with (once per process run)."""
        key = (definition.spec.name, definition.spec.version)
        if key in self._saved:
            return
        self.store.save_definition(
            key[0], key[1], definition.spec.model_dump_json(by_alias=True, exclude_unset=True)
        )
        self._saved.add(key)

    def names(self) -> list[str]:
        return sorted({n for n, _ in self._specs})

    def specs(self) -> list[ProcessSpec]:
        return list(self._specs.values())


def load_tasks(project_root: Path) -> dict[str, TaskHandler]:
    """The project's task handlers: ``HANDLERS`` in ``tasks.py`` at the project root.

    A handler takes ``(input, context)`` and returns JSON data; it may be a
    coroutine function. It must be idempotent per ``context.idempotency_key``.
    """
    path = project_root / TASKS_FILE
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("charter_project_tasks", path)
    if spec is None or spec.loader is None:
        raise CatalogError([Problem(TASKS_FILE, None, "cannot load the module", None)])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the project's own code: report any failure as a catalog problem
        raise CatalogError(
            [Problem(TASKS_FILE, None, f"importing it failed: {exc!r}", "fix the module")]
        ) from exc
    handlers = getattr(module, "HANDLERS", None)
    if not isinstance(handlers, dict) or not all(
        isinstance(k, str) and callable(v) for k, v in handlers.items()
    ):
        raise CatalogError(
            [
                Problem(
                    TASKS_FILE,
                    None,
                    "it must define HANDLERS, a dict from handler name to function",
                    "add HANDLERS = {'name': function}",
                )
            ]
        )
    return dict(handlers)


def is_async(handler: TaskHandler) -> bool:
    return inspect.iscoroutinefunction(handler)
