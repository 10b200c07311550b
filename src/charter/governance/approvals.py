"""Approvals on apply: the teams a plan asks for must have approved, or the skip is recorded.

A plan lists the approvals ownership asks for (the owner of each changed object,
the owner of a changed field's system of record, the owners of what consumes a
breaking change). ``charter apply --approved-by TEAM`` records who approved, as
the person applying says: Charter checks that each named team exists and that
every team the plan asks for is named, not who the person is. Identity and
review belong to the pull request or the change tool around Charter; this makes
the result part of the applied version's history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from charter.errors import CharterError
from charter.governance.plan import Plan


class ApprovalMissing(CharterError):
    """A change applied without an approval its plan asks for."""

    type_ = "approval-missing"
    title = "An approval the plan asks for is missing"
    status = 422


@dataclass(frozen=True)
class Signoff:
    """The approvals the person applying a change asserts, or why they go without."""

    approved_by: tuple[str, ...] = ()
    skip_reason: str | None = None

    @classmethod
    def of(cls, teams: Iterable[str] = (), skip_reason: str | None = None) -> Signoff:
        return cls(tuple(dict.fromkeys(t.strip() for t in teams)), skip_reason)


def approval_record(plan: Plan, signoff: Signoff) -> dict[str, Any]:
    """What history keeps about the approvals of ``plan``; raises when one is missing.

    Every team named must be a team of the applied or the planned catalog. A
    missing approval refuses the change unless ``skip_reason`` says why it goes
    ahead without; the skipped teams and the reason are then recorded.
    """
    if signoff.skip_reason is not None and not signoff.skip_reason.strip():
        raise ApprovalMissing(
            "--skip-approvals needs a reason, and it is empty",
            fix="say why the change goes ahead without approvals: --skip-approvals 'TEXT'",
        )
    for team in signoff.approved_by:
        if team not in plan.known_teams:
            known = ", ".join(sorted(plan.known_teams)) or "none"
            raise ApprovalMissing(
                f"--approved-by {team!r} is not a team of the catalog",
                fix=f"name a team of the catalog ({known})",
            )
    missing = [t for t in plan.approving_teams if t not in signoff.approved_by]
    if missing and signoff.skip_reason is None:
        flags = " ".join(f"--approved-by {t}" for t in missing)
        raise ApprovalMissing(
            f"approval missing from {', '.join(missing)}: " + _why(plan, missing),
            fix=f"once they approved, add {flags}; or go ahead without them with "
            "--skip-approvals REASON (kept in history)",
        )
    return {
        "required": [{"team": a.team, "reason": a.reason} for a in plan.approvals],
        "approved_by": list(signoff.approved_by),
        "skipped": missing,
        "skip_reason": signoff.skip_reason.strip() if missing and signoff.skip_reason else None,
    }


def _why(plan: Plan, teams: list[str]) -> str:
    """The first reason the plan asks each team, and how many more there are."""
    parts: list[str] = []
    for team in teams:
        reasons = [a.reason for a in plan.approvals if a.team == team]
        more = f" and {len(reasons) - 1} more" if len(reasons) > 1 else ""
        parts.append(f"{team} {reasons[0]}{more}")
    return "; ".join(parts)


def describe(record: dict[str, Any] | None) -> str:
    """One line for ``charter history``: who approved, and what was skipped and why."""
    if record is None:
        return "-"
    parts: list[str] = []
    if record.get("approved_by"):
        parts.append("approved by " + ", ".join(record["approved_by"]))
    if record.get("skipped"):
        parts.append(
            f"skipped {', '.join(record['skipped'])}: {record.get('skip_reason') or ''}".rstrip()
        )
    if not parts:
        return "none needed" if not record.get("required") else "-"
    return "; ".join(parts)
