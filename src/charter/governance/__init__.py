"""Governance: schema compatibility between versions of a subject.

``check(mode, new_schema, previous_versions)`` gives a ``Verdict`` under one of
Confluent Schema Registry's modes; each ``Problem`` names its rule, JSON path,
the version it conflicts with and the fix. ``diff`` lists the raw differences.
See docs/governance.md.
"""

from charter.governance.compat import (
    FAMILIES,
    RULES,
    Difference,
    Direction,
    Mode,
    Problem,
    Rule,
    Verdict,
    check,
    diff,
)

__all__ = [
    "FAMILIES",
    "RULES",
    "Difference",
    "Direction",
    "Mode",
    "Problem",
    "Rule",
    "Verdict",
    "check",
    "diff",
]
