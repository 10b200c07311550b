"""Load a project folder into a :class:`Project`, reporting every problem at once.

A project is a folder holding ``charter.yaml`` and any number of YAML files,
each with one or more documents that say their ``kind``. Schemas may be inline
or in JSON/YAML files named relative to the document that uses them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from charter.catalog.model import (
    Domain,
    Entity,
    EventType,
    Integration,
    ProjectSettings,
    System,
    Target,
    Team,
    VersionedRef,
)
from charter.catalog.yamlsrc import Document, read_documents
from charter.engine.spec import ProcessSpec, walk
from charter.errors import CatalogError, Problem
from charter.mapping import MappingSpec

PROJECT_FILE = "charter.yaml"
KINDS: dict[str, type[BaseModel]] = {
    "Project": ProjectSettings,
    "Team": Team,
    "Domain": Domain,
    "System": System,
    "Entity": Entity,
    "Mapping": MappingSpec,
    "Integration": Integration,
    "Process": ProcessSpec,
}


@dataclass(frozen=True)
class Project:
    """A validated project: every object by name (versioned ones by ``(name, version)``)."""

    root: Path
    settings: ProjectSettings
    teams: dict[str, Team] = field(default_factory=dict)
    domains: dict[str, Domain] = field(default_factory=dict)
    systems: dict[str, System] = field(default_factory=dict)
    entities: dict[tuple[str, int], Entity] = field(default_factory=dict)
    mappings: dict[tuple[str, int], MappingSpec] = field(default_factory=dict)
    integrations: dict[str, Integration] = field(default_factory=dict)
    processes: dict[tuple[str, int], ProcessSpec] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.name

    def integrations_for(self, system: str, event: str) -> list[Integration]:
        """The integrations an event of ``system`` of type ``event`` triggers."""
        return [
            i
            for i in self.integrations.values()
            if i.source.system == system and i.source.event == event
        ]

    def event_schema(self, system: str, event: str) -> dict[str, Any]:
        schema = self.systems[system].events[event].schema_
        assert isinstance(schema, dict), "schemas are resolved by the loader"
        return schema

    def entity_schema(self, name: str, version: int) -> dict[str, Any]:
        schema = self.entities[(name, version)].schema_
        assert isinstance(schema, dict), "schemas are resolved by the loader"
        return schema


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _describe(error: dict[str, Any]) -> tuple[str, str | None]:
    """A user's sentence and a fix for one pydantic error."""
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "lax-"))]
    where = ".".join(loc) or "document"
    kind = error["type"]
    if kind == "missing":
        return f"'{where}' is required", f"add '{loc[-1]}:' to the document"
    if kind == "extra_forbidden":
        return f"unknown field '{where}'", "remove it or check its spelling"
    if kind == "enum" or kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"'{where}' is {error.get('input')!r}; expected {expected}", None
    if kind == "string_pattern_mismatch":
        return (
            f"'{where}' is {error.get('input')!r}, which is not a valid name",
            "use lower-case letters, digits, '-' and '_'",
        )
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"'{where}': {message}", None


def _validate_doc(doc: Document, model: type[BaseModel], problems: list[Problem]) -> Any:
    data = {k: v for k, v in doc.data.items() if k != "kind"}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            message, fix = _describe(dict(error))
            loc = tuple(p for p in error["loc"] if not str(p).startswith(("function-", "lax-")))
            problems.append(Problem(doc.file, doc.line_of(_pointer(loc)), message, fix))
        return None


def _yaml_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix in (".yaml", ".yml") and path.is_file():
            yield path


@dataclass
class _Collected:
    settings: list[tuple[Document, ProjectSettings]] = field(default_factory=list)
    objects: dict[str, list[tuple[Document, Any]]] = field(default_factory=dict)


def _resolve_schema(
    value: dict[str, Any] | str, doc: Document, root: Path, pointer: str, problems: list[Problem]
) -> dict[str, Any] | None:
    if isinstance(value, str):
        base = (root / doc.file).parent
        path = (base / value).resolve()
        try:
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except FileNotFoundError:
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(pointer),
                    f"schema file {value!r} not found",
                    "give a path relative to this YAML file",
                )
            )
            return None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(pointer),
                    f"cannot read schema {value!r}: {exc}",
                    "fix the schema file",
                )
            )
            return None
        if not isinstance(loaded, dict):
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(pointer),
                    f"schema {value!r} is not an object",
                    "a JSON Schema is an object",
                )
            )
            return None
        value = loaded
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path)
        problems.append(
            Problem(
                doc.file,
                doc.line_of(pointer),
                f"invalid JSON Schema at '{at}': {exc.message}",
                "write a JSON Schema 2020-12 document",
            )
        )
        return None
    return value


def load_project(root: Path | str) -> Project:
    """Read and validate the project at ``root``; raise :class:`CatalogError` with every problem."""
    root = Path(root)
    problems: list[Problem] = []
    if not (root / PROJECT_FILE).is_file():
        raise CatalogError(
            [
                Problem(
                    str(root),
                    None,
                    f"no {PROJECT_FILE} here, so this is not a Charter project",
                    "run 'charter init DIR' to create one, or pass the project folder",
                )
            ]
        )
    collected = _Collected()
    for path in _yaml_files(root):
        shown = str(path.relative_to(root))
        documents, read_problems = read_documents(path, shown)
        problems.extend(read_problems)
        for doc in documents:
            if not isinstance(doc.data, dict):
                problems.append(
                    Problem(
                        shown,
                        doc.line,
                        "a document must be a mapping with 'kind'",
                        "start the document with 'kind: <Kind>'",
                    )
                )
                continue
            kind = doc.data.get("kind")
            if kind not in KINDS:
                problems.append(
                    Problem(
                        shown,
                        doc.line_of("/kind"),
                        f"unknown kind {kind!r}",
                        f"use one of {', '.join(KINDS)}",
                    )
                )
                continue
            obj = _validate_doc(doc, KINDS[kind], problems)
            if obj is None:
                continue
            if kind == "Project":
                collected.settings.append((doc, obj))
            else:
                collected.objects.setdefault(kind, []).append((doc, obj))
    if not collected.settings:
        if not problems:
            problems.append(
                Problem(
                    PROJECT_FILE,
                    1,
                    "no 'kind: Project' document",
                    "add 'kind: Project' and 'name: <project>'",
                )
            )
        raise CatalogError(problems)
    project = _assemble(root, collected, problems)
    if problems:
        raise CatalogError(problems)
    return project


def _assemble(root: Path, collected: _Collected, problems: list[Problem]) -> Project:
    settings_doc, settings = collected.settings[0]
    broken: set[tuple[str, int]] = set()
    for doc, _ in collected.settings[1:]:
        problems.append(
            Problem(
                doc.file,
                doc.line,
                "a second 'kind: Project' document",
                f"keep one, in {settings_doc.file}",
            )
        )
    where: dict[tuple[str, Any], Document] = {}

    def add(kind: str, key: Any, doc: Document, obj: Any, into: dict[Any, Any]) -> None:
        if key in into:
            first = where[(kind, key)]
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of("/name"),
                    f"{kind} {key!r} is defined twice",
                    f"the first is at {first.file}:{first.line}",
                )
            )
            return
        into[key] = obj
        where[(kind, key)] = doc

    project = Project(root=root, settings=settings)
    for doc, team in collected.objects.get("Team", []):
        add("Team", team.name, doc, team, project.teams)
    for doc, domain in collected.objects.get("Domain", []):
        add("Domain", domain.name, doc, domain, project.domains)
    for doc, system in collected.objects.get("System", []):
        events: dict[str, EventType] = {}
        for event_name, event in system.events.items():
            schema = _resolve_schema(
                event.schema_, doc, root, f"/events/{event_name}/schema", problems
            )
            events[event_name] = event.model_copy(update={"schema_": schema or {}})
        add(
            "System",
            system.name,
            doc,
            system.model_copy(update={"events": events}),
            project.systems,
        )
    for doc, entity in collected.objects.get("Entity", []):
        schema = _resolve_schema(entity.schema_, doc, root, "/schema", problems)
        if schema is None:
            broken.add((entity.name, entity.version))
        add(
            "Entity",
            (entity.name, entity.version),
            doc,
            entity.model_copy(update={"schema_": schema or {}}),
            project.entities,
        )
    for doc, mapping in collected.objects.get("Mapping", []):
        add("Mapping", (mapping.name, mapping.version), doc, mapping, project.mappings)
    for doc, integration in collected.objects.get("Integration", []):
        add("Integration", integration.name, doc, integration, project.integrations)
    for doc, process in collected.objects.get("Process", []):
        add("Process", (process.name, process.version), doc, process, project.processes)
    _check_references(project, where, problems, broken)
    return project


def _check_references(
    project: Project,
    where: dict[tuple[str, Any], Document],
    problems: list[Problem],
    broken: set[tuple[str, int]],
) -> None:
    """Check every reference between documents; ``broken`` entities have no usable schema."""

    def problem(kind: str, key: Any, pointer: str, message: str, fix: str) -> None:
        doc = where[(kind, key)]
        problems.append(Problem(doc.file, doc.line_of(pointer), message, fix))

    def team(kind: str, key: Any, owner: str, pointer: str = "/owner") -> None:
        if owner not in project.teams:
            problem(
                kind,
                key,
                pointer,
                f"owner team {owner!r} is not defined",
                f"add a 'kind: Team' document named {owner!r} or name an existing team",
            )

    def domain(kind: str, key: Any, name: str | None) -> None:
        if name is not None and name not in project.domains:
            problem(
                kind,
                key,
                "/domain",
                f"domain {name!r} is not defined",
                f"add a 'kind: Domain' document named {name!r}",
            )

    def system(kind: str, key: Any, name: str, pointer: str) -> bool:
        if name not in project.systems:
            problem(
                kind,
                key,
                pointer,
                f"system {name!r} is not defined",
                f"add a 'kind: System' document named {name!r}",
            )
            return False
        return True

    for d in project.domains.values():
        team("Domain", d.name, d.owner)
    for s in project.systems.values():
        team("System", s.name, s.owner)
        domain("System", s.name, s.domain)
    for key, e in project.entities.items():
        team("Entity", key, e.owner)
        domain("Entity", key, e.domain)
        system("Entity", key, e.system_of_record, "/system_of_record")
        # Without a usable schema, field checks would only repeat the schema problem.
        properties = project.entity_schema(*key).get("properties", {})
        for field_name, rule in e.fields.items():
            if key not in broken and field_name not in properties:
                problem(
                    "Entity",
                    key,
                    f"/fields/{field_name}",
                    f"field {field_name!r} is not in the schema of {e.name}@{e.version}",
                    "add it to the schema's properties or remove it here",
                )
            system("Entity", key, rule.system_of_record, f"/fields/{field_name}/system_of_record")
        if key not in broken and e.key not in properties:
            problem(
                "Entity",
                key,
                "/key",
                f"key {e.key!r} is not in the schema's properties",
                "name a property of the schema as the key",
            )
    for key, m in project.mappings.items():
        src, dst = m.source, m.target
        if src.system is not None and system("Mapping", key, src.system, "/source/system"):
            if src.event not in project.systems[src.system].events:
                problem(
                    "Mapping",
                    key,
                    "/source/event",
                    f"system {src.system!r} declares no event {src.event!r}",
                    f"add it under 'events:' of system {src.system!r}",
                )
        for end, pointer in ((src, "/source"), (dst, "/target")):
            if end.entity is not None and (end.entity, end.version) not in project.entities:
                problem(
                    "Mapping",
                    key,
                    pointer,
                    f"entity {end.entity}@{end.version} is not defined",
                    "add that entity version or fix the reference",
                )
        if dst.system is not None:
            system("Mapping", key, dst.system, "/target/system")
    for name, i in project.integrations.items():
        team("Integration", name, i.owner)
        domain("Integration", name, i.domain)
        if system("Integration", name, i.source.system, "/source/system"):
            if i.source.event not in project.systems[i.source.system].events:
                problem(
                    "Integration",
                    name,
                    "/source/event",
                    f"system {i.source.system!r} declares no event {i.source.event!r}",
                    f"add it under 'events:' of system {i.source.system!r}",
                )
        entity_key = (i.entity.name, i.entity.version)
        if entity_key not in project.entities:
            problem(
                "Integration",
                name,
                "/entity",
                f"entity {i.entity} is not defined",
                "add that entity version or fix the reference",
            )
        mapping = project.mappings.get((i.mapping.name, i.mapping.version))
        if mapping is None:
            problem(
                "Integration",
                name,
                "/mapping",
                f"mapping {i.mapping} is not defined",
                "add that mapping version or fix the reference",
            )
        elif (mapping.source.system, mapping.source.event) != (i.source.system, i.source.event) or (
            mapping.target.entity,
            mapping.target.version,
        ) != entity_key:
            problem(
                "Integration",
                name,
                "/mapping",
                f"mapping {i.mapping} maps {mapping.source} to {mapping.target}, not "
                f"{i.source.system}/{i.source.event} to {i.entity}",
                "name a mapping from this source event to this entity",
            )
        for n, target in enumerate(i.targets):
            if not system("Integration", name, target.system, f"/targets/{n}/system"):
                continue
            _check_call(
                project,
                name,
                f"/targets/{n}",
                "target",
                target.system,
                target.mapping,
                entity_key,
                problem,
            )
            if target.fallback is not None:
                _check_fallback(project, name, n, target, entity_key, problem, system)
    _check_processes(project, problem, team, domain, system)


def _check_call(
    project: Project,
    name: str,
    at: str,
    role: str,
    system_name: str,
    mapping: VersionedRef,
    entity_key: tuple[str, int],
    problem: Any,
) -> None:
    """A system an integration calls (as its ``role``: target or fallback) at ``at``: it
    needs a connector, and ``mapping`` must map the integration's entity to it."""
    if project.systems[system_name].connector is None:
        problem(
            "Integration",
            name,
            f"{at}/system",
            f"{role} system {system_name!r} has no connector",
            f"add 'connector:' with a base_url to system {system_name!r}",
        )
    found = project.mappings.get((mapping.name, mapping.version))
    if found is None:
        problem(
            "Integration",
            name,
            f"{at}/mapping",
            f"mapping {mapping} is not defined",
            "add that mapping version or fix the reference",
        )
    elif (found.source.entity, found.source.version) != entity_key or (
        found.target.system != system_name
    ):
        problem(
            "Integration",
            name,
            f"{at}/mapping",
            f"mapping {mapping} does not map {entity_key[0]}@{entity_key[1]} to system "
            f"{system_name!r}",
            f"name a mapping from this entity to the {role} system {system_name!r}",
        )


def _check_fallback(
    project: Project,
    name: str,
    n: int,
    target: Target,
    entity_key: tuple[str, int],
    problem: Any,
    system: Any,
) -> None:
    """A target's fallback: a system that can be called with a mapping to it, or a folder
    the hub can write to (created here if it is not there)."""
    fallback = target.fallback
    assert fallback is not None
    at = f"/targets/{n}/fallback"
    if not project.systems[target.system].breaker.enabled:
        problem(
            "Integration",
            name,
            at,
            f"target system {target.system!r} has its circuit breaker disabled, so this "
            "fallback would never be used",
            f"enable the breaker of system {target.system!r} or remove the fallback",
        )
    if fallback.to is not None:
        to = fallback.to
        if to.system == target.system:
            problem(
                "Integration",
                name,
                f"{at}/to/system",
                f"the fallback of target {target.system!r} is the same system",
                "name another system, or use 'file: {dir}' or 'park'",
            )
        elif system("Integration", name, to.system, f"{at}/to/system"):
            _check_call(
                project, name, f"{at}/to", "fallback", to.system, to.mapping, entity_key, problem
            )
    if fallback.file is not None:
        folder = project.root / fallback.file.dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK | os.X_OK)
            reason = "it is not writable"
        except OSError as exc:
            writable, reason = False, exc.strerror or str(exc)
        if not writable:
            problem(
                "Integration",
                name,
                f"{at}/file/dir",
                f"the file drop folder {fallback.file.dir!r} cannot be used: {reason}",
                "create it where the hub may write, or name another folder "
                "(relative to the project)",
            )


def _check_processes(project: Project, problem: Any, team: Any, domain: Any, system: Any) -> None:
    """References of processes: owners, systems with connectors, events, subprocesses."""
    names = {name for name, _ in project.processes}
    for key, p in project.processes.items():
        team("Process", key, p.owner)
        domain("Process", key, p.domain)
        for n, trigger in enumerate(p.triggers):
            if trigger.event is not None:
                at = f"/triggers/{n}/event"
                if system("Process", key, trigger.event.system, f"{at}/system") and (
                    trigger.event.type not in project.systems[trigger.event.system].events
                ):
                    problem(
                        "Process",
                        key,
                        f"{at}/type",
                        f"system {trigger.event.system!r} declares no event {trigger.event.type!r}",
                        f"add it under 'events:' of system {trigger.event.system!r}",
                    )
        for step in walk(p.steps):
            calls = [step.call, step.compensate.call if step.compensate else None]
            for call in (c for c in calls if c is not None):
                if call.system not in project.systems:
                    problem(
                        "Process",
                        key,
                        "/steps",
                        f"step {step.id!r} calls system {call.system!r}, which is not defined",
                        f"add a 'kind: System' document named {call.system!r}",
                    )
                elif project.systems[call.system].connector is None:
                    problem(
                        "Process",
                        key,
                        "/steps",
                        f"step {step.id!r} calls system {call.system!r}, which has no connector",
                        f"add 'connector:' with a base_url to system {call.system!r}",
                    )
            if step.wait is not None and step.wait.event is not None:
                event = step.wait.event
                if event.system not in project.systems:
                    problem(
                        "Process",
                        key,
                        "/steps",
                        f"step {step.id!r} waits for system {event.system!r}, which is not defined",
                        f"add a 'kind: System' document named {event.system!r}",
                    )
                elif event.type not in project.systems[event.system].events:
                    problem(
                        "Process",
                        key,
                        "/steps",
                        f"step {step.id!r} waits for {event.system}/{event.type}, which the "
                        "system does not declare",
                        f"add {event.type!r} under 'events:' of system {event.system!r}",
                    )
            for owner in (
                step.approve.team if step.approve else None,
                step.escalate.team if step.escalate else None,
            ):
                if owner is not None:
                    team("Process", key, owner, "/steps")
            if step.subprocess is not None and step.subprocess.process not in names:
                problem(
                    "Process",
                    key,
                    "/steps",
                    f"step {step.id!r} starts process {step.subprocess.process!r}, which is "
                    "not defined",
                    "add that process or fix the name",
                )
