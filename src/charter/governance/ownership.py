"""Field-level system of record: who may write which canonical field, and what happens if not.

An ingest from system S writes canonical field F of entity E when the
integration's ingress mapping outputs F (a top-level output key, or the first
segment of a dotted one). ``E.fields`` lists the fields whose writes are
governed, each with its system of record and a policy for writes by any other
system: ``reject`` refuses the event (422), ``ignore`` drops F from the
canonical payload, ``quarantine`` stores the event but holds its deliveries
until the owner of F's system of record accepts or rejects the write. Fields
not listed are not governed one by one; the entity's ``system_of_record`` owns
the record as a whole.

:class:`FieldGuard` is pure (the router runs it on the hot path);
:class:`QuarantineReview` and :func:`write_report` are the service the API and
the CLI share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from charter.catalog import Integration, Project
from charter.catalog.model import WritePolicy
from charter.errors import CharterError, InvalidEvent
from charter.store import FieldHold, FieldWrite, Operator, QuarantineStatus, Store

OUTCOME = {
    WritePolicy.REJECT: "rejected",
    WritePolicy.IGNORE: "ignored",
    WritePolicy.QUARANTINE: "quarantined",
}


class FieldWriteRefused(InvalidEvent):
    """A system wrote a field it does not own, and the field's policy is ``reject`` (422)."""

    type_ = "field-write-refused"
    title = "The event writes a field another system owns"

    def __init__(self, detail: str, *, fix: str, write: FieldWrite, **extra: Any) -> None:
        super().__init__(detail, fix=fix, **extra)
        self.write = write


class InvalidOperation(CharterError):
    """A review's input cannot be used; ``pointer`` names the offending member (422)."""

    type_ = "invalid-request"
    title = "The request is invalid"
    status = 422

    def __init__(self, detail: str, *, pointer: str, fix: str | None = None) -> None:
        super().__init__(detail, fix=fix, pointer=pointer)


@dataclass(frozen=True)
class ForeignField:
    """A governed field the integration's source writes without owning it."""

    name: str
    system_of_record: str
    policy: WritePolicy
    team: str  # owner of the system of record


@dataclass(frozen=True)
class Enforced:
    """A canonical payload after the policies ran, with what they decided."""

    canonical: dict[str, Any]
    holds: list[FieldHold]
    writes: list[FieldWrite]


class FieldGuard:
    """The ownership rules for one integration's ingress: known when the project loads.

    Contract: ``enforce`` returns the payload to validate and deliver (without
    ignored fields), the holds for quarantined fields and one ``FieldWrite``
    per decision; or raises :class:`FieldWriteRefused` for the first field
    under ``reject``. It never looks at writes by a field's system of record.
    """

    __slots__ = ("entity", "fields", "integration", "system")

    def __init__(self, project: Project, integration: Integration, outputs: list[str]) -> None:
        self.integration = integration.name
        self.system = integration.source.system
        entity = project.entities[(integration.entity.name, integration.entity.version)]
        self.entity = entity.name
        written = {output.split(".", 1)[0] for output in outputs}
        self.fields = tuple(
            ForeignField(
                name=name,
                system_of_record=rule.system_of_record,
                policy=rule.policy,
                team=project.systems[rule.system_of_record].owner,
            )
            for name, rule in entity.fields.items()
            if name in written and rule.system_of_record != self.system
        )

    def enforce(self, canonical: dict[str, Any], pointer: str = "") -> Enforced:
        """Apply the policies; ``pointer`` locates the event's data in the request."""
        holds: list[FieldHold] = []
        writes: list[FieldWrite] = []
        for f in self.fields:
            if f.name not in canonical:
                continue
            writes.append(
                FieldWrite(self.system, self.entity, f.name, f.policy.value, OUTCOME[f.policy])
            )
            if f.policy is WritePolicy.REJECT:
                raise FieldWriteRefused(
                    f"integration {self.integration!r}: system {self.system!r} writes "
                    f"{self.entity}.{f.name}, whose system of record is {f.system_of_record!r} "
                    f"(policy reject)",
                    fix=f"stop mapping '{f.name}' in the ingress mapping of "
                    f"{self.integration}, or ask {f.team} to set policy ignore or quarantine "
                    f"for {self.entity}.{f.name}",
                    write=writes[-1],
                    pointer=pointer,
                    field=f"{self.entity}.{f.name}",
                    system_of_record=f.system_of_record,
                    policy=f.policy.value,
                )
            if f.policy is WritePolicy.IGNORE:
                canonical = {k: v for k, v in canonical.items() if k != f.name}
            else:
                holds.append(
                    FieldHold(
                        integration=self.integration,
                        entity=self.entity,
                        field=f.name,
                        value=orjson.dumps(canonical[f.name]).decode(),
                        system_of_record=f.system_of_record,
                        team=f.team,
                    )
                )
        return Enforced(canonical, holds, writes)


class QuarantineReview:
    """Held writes for their owners: list, accept (deliver as sent), reject (deliver without)."""

    def __init__(self, project: Project, store: Store) -> None:
        self.project = project
        self.store = store

    def list(
        self, team: str | None = None, status: str | None = "open", limit: int = 100
    ) -> list[dict[str, Any]]:
        if team is not None and team not in self.project.teams:
            known = ", ".join(sorted(self.project.teams)) or "none"
            raise InvalidOperation(
                f"there is no team {team!r}", pointer="/team", fix=f"use one of: {known}"
            )
        wanted = None
        if status not in (None, "all"):
            try:
                wanted = QuarantineStatus(status)
            except ValueError as exc:
                raise InvalidOperation(
                    f"there is no quarantine status {status!r}",
                    pointer="/status",
                    fix="use open, accepted, rejected or all",
                ) from exc
        rows = self.store.list_quarantine(team, wanted, limit)
        for row in rows:
            row["value"] = orjson.loads(row["value"])
        return rows

    def decide(self, hold_id: int, accept: bool, who: Operator) -> dict[str, Any]:
        """Accept or reject one held write; returns it decided, with the released deliveries."""
        row = self.store.decide_quarantine(hold_id, accept, who)
        row["value"] = orjson.loads(row["value"])
        return row


def write_report(project: Project, store: Store) -> list[dict[str, Any]]:
    """Write decisions per (system, entity, field, policy, outcome), with the field's owner."""
    rows = store.write_counts()
    for row in rows:
        owner = None
        for (name, _version), entity in project.entities.items():
            rule = entity.fields.get(row["field"]) if name == row["entity"] else None
            if rule is not None:
                owner = rule.system_of_record
        row["system_of_record"] = owner
        system = project.systems.get(owner) if owner is not None else None
        row["team"] = system.owner if system is not None else None
    return rows
