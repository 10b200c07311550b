"""``charter plan``: what applying the project folder would change, and who must agree.

A plan compares the folder with the version applied last (nothing, the first
time): object by object, create, update or delete with each changed field's
before and after; the compatibility verdict of each schema change; the blast
radius of the whole change; and the approvals ownership asks for. It carries
the snapshot it would apply and the version it was made against, so
``charter apply`` applies exactly it, or refuses when the applied state has
moved on since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from charter.catalog import Project
from charter.errors import CharterError
from charter.governance import impact
from charter.governance.compat import Mode, check
from charter.governance.snapshot import Snapshot, SnapshotError, load_snapshot, objects

# Every applied snapshot, oldest first (the latest applied one last); called only when a
# subject under a transitive mode changed, since loading old snapshots costs.
History = Callable[[], Sequence[Snapshot]]

PLAN_FORMAT = 1
NO_CHANGES, CHANGES, BREAKING = 0, 2, 3


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Change:
    object: str
    action: str  # create | update | delete
    owner: str | None
    fields: list[FieldChange] = field(default_factory=list)


@dataclass(frozen=True)
class SchemaCheck:
    """One schema subject's change: its verdict under the subject's mode."""

    subject: str
    before: str
    after: str
    mode: str
    compatible: bool
    new_major: bool
    problems: list[dict[str, Any]] = field(default_factory=list)
    # The subject versions checked, oldest first: the latest applied one, or under a
    # transitive mode every distinct schema the subject had in an applied version.
    against: list[int] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """Breaking, yet under the same version: immutable versions forbid it."""
        return not self.compatible and not self.new_major


@dataclass(frozen=True)
class Approval:
    team: str
    reason: str


@dataclass
class Plan:
    base_version: int | None
    base_digest: str | None
    target: Snapshot
    changes: list[Change]
    schemas: list[SchemaCheck]
    impact: list[impact.Affected]
    teams: dict[str, int]
    approvals: list[Approval]
    created_at: float = field(default_factory=time.time)
    # The teams of the applied and the planned catalog: who may approve (not serialised).
    known_teams: frozenset[str] = field(default_factory=frozenset, compare=False)

    @property
    def approving_teams(self) -> list[str]:
        """The teams whose approval the plan asks for, each once."""
        return sorted({a.team for a in self.approvals})

    @property
    def breaking(self) -> bool:
        return any(not s.compatible for s in self.schemas)

    @property
    def exit_code(self) -> int:
        if not self.changes:
            return NO_CHANGES
        return BREAKING if self.breaking else CHANGES

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "created_at": self.created_at,
            "base": {"version": self.base_version, "digest": self.base_digest},
            "target": {"digest": self.target.digest, "files": self.target.to_json()},
            "summary": {
                action: sum(1 for c in self.changes if c.action == action)
                for action in ("create", "update", "delete")
            }
            | {"breaking": self.breaking},
            "changes": [asdict(c) for c in self.changes],
            "schemas": [asdict(s) | {"refused": s.refused} for s in self.schemas],
            "impact": [a.to_json() for a in self.impact],
            "teams": self.teams,
            "approvals": [asdict(a) for a in self.approvals],
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        """A plan read back from ``--out``; only what apply needs is trusted, the rest is
        recomputed by apply from the snapshot."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise SnapshotError(
                "this is not a plan file of this Charter version",
                fix="make the plan again with 'charter plan --out FILE'",
            )
        base = data.get("base") or {}
        target = Snapshot.from_json((data.get("target") or {}).get("files"))
        digest = (data.get("target") or {}).get("digest")
        if digest != target.digest:
            raise SnapshotError(
                "the plan's files do not match its digest (edited after it was made?)",
                fix="make the plan again with 'charter plan --out FILE'",
            )
        version = base.get("version")
        return cls(
            base_version=version if isinstance(version, int) else None,
            base_digest=base.get("digest"),
            target=target,
            changes=[],
            schemas=[],
            impact=[],
            teams={},
            approvals=[],
            created_at=float(data.get("created_at") or 0.0),
        )


def diff_values(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Field-level differences, as JSON pointers; lists compare whole."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[FieldChange] = []
        for key in sorted(set(before) | set(after), key=str):
            pointer = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in before:
                found.append(FieldChange(pointer, None, after[key]))
            elif key not in after:
                found.append(FieldChange(pointer, before[key], None))
            else:
                found += diff_values(before[key], after[key], pointer)
        return found
    if before != after:
        return [FieldChange(path or "/", before, after)]
    return []


def _owner(obj: dict[str, Any] | None) -> str | None:
    value = (obj or {}).get("owner")
    return value if isinstance(value, str) else None


def _subjects(project: Project) -> dict[str, tuple[int, dict[str, Any], dict[str, str], str]]:
    """Schema subjects: ``entity:name`` and ``event:system/type`` -> (version, schema, renames,
    compatibility mode).

    An entity's subject is its newest version in the project; renames come from the
    mappings that produce that version.
    """
    found: dict[str, tuple[int, dict[str, Any], dict[str, str], str]] = {}
    for (name, version), entity in sorted(project.entities.items()):
        renames: dict[str, str] = {}
        for mapping in project.mappings.values():
            if mapping.target.entity == name and mapping.target.version == version:
                renames |= dict(getattr(mapping, "renames", None) or {})
        assert isinstance(entity.schema_, dict)
        found[f"entity:{name}"] = (version, entity.schema_, renames, entity.compatibility.value)
    for name, system in project.systems.items():
        for event, spec in system.events.items():
            assert isinstance(spec.schema_, dict)
            found[f"event:{name}/{event}"] = (
                spec.version,
                spec.schema_,
                {},
                spec.compatibility.value,
            )
    return found


def _subject_versions(project: Project) -> dict[str, list[tuple[int, Any]]]:
    """Every (version, schema) of each subject in a project: all versions of an entity, the
    one version of a system's event."""
    found: dict[str, list[tuple[int, Any]]] = {}
    for (name, version), entity in sorted(project.entities.items()):
        found.setdefault(f"entity:{name}", []).append((version, entity.schema_))
    for name, system in project.systems.items():
        for event, spec in system.events.items():
            found.setdefault(f"event:{name}/{event}", []).append((spec.version, spec.schema_))
    return found


class _AppliedHistory:
    """The applied snapshots as projects, loaded once and only when first asked for.

    A snapshot that no longer loads (the catalog format moved on since it was applied)
    is left out: its schemas were checked when it was applied.
    """

    def __init__(self, history: History | None, latest: tuple[str, Project] | None) -> None:
        self.history = history
        self.latest = latest
        self._projects: list[Project] | None = None

    def projects(self) -> list[Project]:
        if self._projects is None:
            loaded: dict[str, Project] = dict([self.latest]) if self.latest else {}
            found: list[Project] = []
            for snapshot in self.history() if self.history is not None else []:
                project = loaded.get(snapshot.digest)
                if project is None:
                    try:
                        project = loaded[snapshot.digest] = load_snapshot(snapshot)
                    except CharterError:
                        continue
                found.append(project)
            self._projects = found
        return self._projects

    def earlier(self, subject: str, latest: tuple[int, Any]) -> list[tuple[int, Any]]:
        """Each distinct schema ``subject`` had in an applied version, oldest first, ending
        with ``latest`` (the latest applied one)."""
        found: list[tuple[int, Any]] = []
        for project in self.projects():
            for version, schema in _subject_versions(project).get(subject, []):
                if schema != latest[1] and all(schema != s for _, s in found):
                    found.append((version, schema))
        return [*found, latest]


def _schema_checks(
    before: Project | None, after: Project, applied: _AppliedHistory
) -> list[SchemaCheck]:
    if before is None:
        return []
    old, new = _subjects(before), _subjects(after)
    checks: list[SchemaCheck] = []
    for subject in sorted(set(old) & set(new)):
        (v0, s0, _, _), (v1, s1, renames, declared) = old[subject], new[subject]
        if s0 == s1:
            continue
        # The subject's own mode, as the new version declares it. Transitive modes check
        # against every schema the subject had in an applied version, not only the latest.
        mode = Mode(declared)
        earlier = applied.earlier(subject, (v0, s0)) if mode.transitive else [(v0, s0)]
        verdict = check(
            mode,
            s1,
            [s for _, s in earlier],
            renames=renames or None,
            versions=[v for v, _ in earlier],
        )
        # One version number can have had several (compatible) schemas: say each problem once.
        problems = {orjson.dumps(p.to_json()): p.to_json() for p in verdict.problems}
        checks.append(
            SchemaCheck(
                subject=subject,
                before=f"v{v0}",
                after=f"v{v1}",
                mode=mode.value,
                compatible=verdict.compatible,
                new_major=v1 > v0,
                problems=list(problems.values()),
                against=[v for v, _ in earlier],
            )
        )
    return checks


def _starts(change: Change) -> list[str]:
    """The graph nodes a change starts from."""
    kind, _, name = change.object.partition("/")
    bare = name.split("@", 1)[0]
    if kind == "system":
        events = [
            f"event:{bare}/{p.split('/')[2]}"
            for p in (f.path for f in change.fields)
            if p.startswith("/events/") and len(p.split("/")) > 2
        ]
        return sorted(set(events)) or [f"system:{bare}"]
    if kind == "entity":
        fields = [
            f"field:{bare}." + ".".join(s for s in f.path.split("/")[3:] if s != "properties")
            for f in change.fields
            if f.path.startswith("/schema/properties/")
        ]
        return sorted(set(fields)) or [f"entity:{bare}"]
    if kind in ("mapping",):
        return [f"mapping:{name}"]
    if kind in ("integration", "process", "team"):
        return [f"{kind}:{bare}"]
    return []


def _approvals(
    changes: list[Change], schemas: list[SchemaCheck], affected: list[impact.Affected]
) -> list[Approval]:
    found: dict[tuple[str, str], Approval] = {}

    def need(team: str | None, reason: str) -> None:
        if team is not None:
            found.setdefault((team, reason), Approval(team, reason))

    for change in changes:
        need(change.owner, f"owns {change.object} ({change.action})")
    for a in affected:
        if a.kind == "field" and a.hops == 0:
            need(a.owner, f"system of record of {a.name}")
    if any(not s.compatible for s in schemas):
        for a in affected:
            if a.kind in ("integration", "process") and a.hops > 0:
                need(a.owner, f"{a.kind} {a.name} consumes a breaking change")
    return sorted(found.values(), key=lambda x: (x.team, x.reason))


def make_plan(
    folder: Snapshot,
    applied: tuple[int, Snapshot] | None,
    project: Project | None = None,
    history: History | None = None,
) -> Plan:
    """The plan that turns the ``applied`` (version, snapshot) into ``folder``.

    ``history`` gives every applied snapshot, for subjects under a transitive mode;
    without it they are checked against the latest applied version only.
    """
    after = project or load_snapshot(folder)
    before = load_snapshot(applied[1]) if applied is not None else None
    team_names = frozenset(after.teams) | frozenset(before.teams if before is not None else ())
    old = objects(before) if before is not None else {}
    new = objects(after)
    changes: list[Change] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            changes.append(Change(key, "create", _owner(new[key])))
        elif key not in new:
            changes.append(Change(key, "delete", _owner(old[key])))
        elif old[key] != new[key]:
            changes.append(Change(key, "update", _owner(new[key]), diff_values(old[key], new[key])))
    latest = (applied[1].digest, before) if applied is not None and before is not None else None
    schemas = _schema_checks(before, after, _AppliedHistory(history, latest))
    if before is None:
        # The first apply: everything is new, so nothing already running can break, and
        # no team owns anything yet whose approval it would need.
        return Plan(None, None, folder, changes, schemas, [], {}, [], known_teams=team_names)
    graph = impact.build(after)
    starts: list[str] = []
    for change in changes:
        if change.action == "delete":
            continue
        starts += [s for s in _starts(change) if s in graph]
    affected = graph.impact(sorted(set(starts)))
    # A deleted object's dependants are found in the graph it was part of.
    gone = [s for c in changes if c.action == "delete" for s in _starts(c)]
    reached = {a.node for a in affected}
    affected += [a for a in impact.build(before).impact(gone) if a.node not in reached]
    assert applied is not None
    return Plan(
        base_version=applied[0],
        base_digest=applied[1].digest,
        target=folder,
        changes=changes,
        schemas=schemas,
        impact=affected,
        teams=impact.teams(affected),
        approvals=_approvals(changes, schemas, affected),
        known_teams=team_names,
    )
