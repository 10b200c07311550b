"""Plan, apply, history and rollback of a project's catalog, over the hub's database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charter.errors import CharterError, Conflict
from charter.governance.approvals import Signoff, approval_record
from charter.governance.plan import Plan, make_plan
from charter.governance.snapshot import Snapshot, capture
from charter.store.catalog import AppliedVersion, CatalogStore


class ChangeRefused(CharterError):
    """A plan, apply or rollback that cannot go ahead as asked."""

    type_ = "change-refused"
    title = "The change cannot be applied"
    status = 422


class Governance:
    """What ``charter plan | apply | history | rollback`` do."""

    def __init__(self, catalog: CatalogStore) -> None:
        self.catalog = catalog

    def applied(self) -> tuple[int, Snapshot] | None:
        latest = self.catalog.latest()
        if latest is None or latest.files is None:
            return None
        return latest.version, Snapshot(latest.files)

    def snapshots(self) -> list[Snapshot]:
        """Every applied version's snapshot, oldest first."""
        return [Snapshot(files) for files in self.catalog.snapshots()]

    def plan(self, folder: Path) -> Plan:
        """What applying the project in ``folder`` would change."""
        return make_plan(capture(folder), self.applied(), history=self.snapshots)

    def apply(
        self, made: Plan, by: str, reason: str, signoff: Signoff | None = None
    ) -> tuple[int, Plan]:
        """Apply exactly the snapshot of ``made``; refuses when the applied state moved on
        since it was made, when it changes a schema version incompatibly, or when an
        approval it asks for is missing (unless ``signoff`` skips them with a reason)."""
        applied = self.applied()
        current = applied[0] if applied is not None else None
        if current != made.base_version:
            # The store checks again in the transaction that adds the version.
            raise Conflict(
                f"the applied catalog is at version {current}, but the plan was made against "
                f"version {made.base_version}",
                fix="make a new plan with 'charter plan --out FILE' and apply that",
            )
        plan = make_plan(made.target, applied, history=self.snapshots)
        if not plan.changes:
            raise ChangeRefused(
                "the plan changes nothing: the folder is what is applied",
                fix="edit the project, then make a new plan",
            )
        refused = [s for s in plan.schemas if s.refused]
        if refused:
            listed = "; ".join(
                f"{s.subject} {s.before}: "
                + ", ".join(f"{p['rule']} at {p['path']}" for p in s.problems[:3])
                for s in refused
            )
            raise ChangeRefused(
                f"breaking schema change without a new major version: {listed}",
                fix="make the change compatible, or raise the version of the entity or event "
                "(keeping the old one while consumers move)",
            )
        version = self._append(plan, "apply", by, reason, made.base_version, signoff)
        return version, plan

    def rollback(
        self, to: int | None, by: str, reason: str, signoff: Signoff | None = None
    ) -> tuple[int, Plan]:
        """Make the applied catalog what version ``to`` (default: the one before) was; the
        approvals its plan asks for are required as for an apply."""
        latest = self.catalog.latest()
        if latest is None:
            raise ChangeRefused("nothing has been applied yet", fix="apply a plan first")
        target = to if to is not None else (latest.based_on or 0)
        if target < 1:
            raise ChangeRefused(
                f"version {latest.version} has no earlier version to go back to",
                fix="name a version from 'charter history'",
            )
        if target == latest.version:
            raise ChangeRefused(
                f"version {target} is already the applied one",
                fix="name an earlier version from 'charter history'",
            )
        old = self.catalog.get(target)
        assert old.files is not None
        plan = make_plan(Snapshot(old.files), self.applied(), history=self.snapshots)
        version = self._append(plan, f"rollback:{target}", by, reason, latest.version, signoff)
        return version, plan

    def history(self, limit: int = 50) -> list[AppliedVersion]:
        return self.catalog.history(limit)

    def _append(
        self,
        plan: Plan,
        action: str,
        by: str,
        reason: str,
        expected: int | None,
        signoff: Signoff | None,
    ) -> int:
        if not by.strip() or not reason.strip():
            raise ChangeRefused(
                "who applies a change, and why, are both required",
                fix="pass --by NAME and --reason TEXT",
            )
        approvals = approval_record(plan, signoff or Signoff())
        body: dict[str, Any] = plan.to_json()
        return self.catalog.append(
            expected=expected,
            digest=plan.target.digest,
            files=plan.target.to_json(),
            action=action,
            by=by,
            reason=reason,
            summary=body["summary"] | {"approvals": approvals},
            changes=body["changes"],
        )
