"""Snapshots, object diffs, the dependency graph and plans, on the example projects."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from charter.catalog import load_project
from charter.governance import impact
from charter.governance.plan import BREAKING, CHANGES, NO_CHANGES, Plan, diff_values, make_plan
from charter.governance.snapshot import Snapshot, SnapshotError, capture, load_snapshot, objects


def example(tmp_path: Path, name: str) -> Path:
    with resources.as_file(resources.files("charter") / "templates" / name) as source:
        shutil.copytree(source, tmp_path / name)
    return tmp_path / name


def test_a_snapshot_holds_the_project_files_and_not_the_hubs_state(tmp_path: Path) -> None:
    root = example(tmp_path, "starter")
    (root / ".charter").mkdir()
    (root / ".charter" / "charter.db").write_bytes(b"\0\1")
    (root / "notes.txt").write_text("not part of the catalog")
    snap = capture(root)
    assert "charter.yaml" in snap.files and "schemas/crm-deal-closed.json" in snap.files
    assert not any(name.startswith(".charter") or name == "notes.txt" for name in snap.files)
    assert snap.digest == capture(root).digest
    assert objects(load_snapshot(snap)) == objects(load_project(root))
    (root / "teams.yaml").write_text((root / "teams.yaml").read_text() + "\n")
    assert capture(root).digest != snap.digest


def test_a_snapshot_refuses_paths_outside_the_project_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="outside the project"):
        load_snapshot(Snapshot({"../escape.yaml": "kind: Team"}))
    root = example(tmp_path, "starter")
    (root / "blob.json").write_bytes(b"\xff\xfe")
    with pytest.raises(SnapshotError, match=r"blob\.json is not UTF-8"):
        capture(root)


def test_diff_values_names_each_changed_field_by_json_pointer() -> None:
    before = {"a": 1, "b": {"c": [1, 2], "d/e": "x"}, "gone": True}
    after = {"a": 1, "b": {"c": [1, 3], "d/e": "y"}, "new": None}
    changes = {c.path: (c.before, c.after) for c in diff_values(before, after)}
    assert changes == {
        "/b/c": ([1, 2], [1, 3]),
        "/b/d~1e": ("x", "y"),
        "/gone": (True, None),
        "/new": (None, None),
    }


def test_the_graph_follows_events_fields_mappings_and_integrations_to_owners(
    tmp_path: Path,
) -> None:
    graph = impact.build(load_project(example(tmp_path, "starter")))
    reached = {a.node: a for a in graph.impact(["field:order.status"])}
    assert reached["mapping:order-to-erp@1"].hops == 1
    assert reached["integration:deal-to-erp-order"].hops == 2
    assert reached["system:erp"].hops == 2  # the mapping shapes its payload
    assert reached["integration:deal-to-erp-order"].via == "mapping:order-to-erp@1"
    assert "field:order.total" not in reached
    from_crm = graph.impact(["system:crm"])
    assert impact.teams(from_crm)["sales-ops"] == 0
    o2c = impact.build(load_project(example(tmp_path, "order-to-cash")))
    reached = {a.node: a for a in o2c.impact(["system:warehouse"])}
    assert reached["process:order-to-cash"].owner == "finance-ops"
    assert graph.suggestions("system:cr") == ["system:crm"]


def test_plans_count_changes_and_exit_codes_follow_them(tmp_path: Path) -> None:
    root = example(tmp_path, "order-to-cash")
    first = make_plan(capture(root), None)
    assert first.exit_code == CHANGES
    assert {c.action for c in first.changes} == {"create"}
    assert first.impact == []
    applied = (1, capture(root))
    assert make_plan(capture(root), applied).exit_code == NO_CHANGES

    schema_file = root / "schemas" / "crm-deal-closed.json"
    schema = json.loads(schema_file.read_text())
    schema["properties"]["currency"]["enum"].append("CHF")
    schema_file.write_text(json.dumps(schema))
    widened = make_plan(capture(root), applied)
    assert widened.exit_code == CHANGES
    [change] = widened.changes
    assert change.object == "system/crm" and change.action == "update"
    assert [f.path for f in change.fields] == [
        "/events/deal.closed/schema/properties/currency/enum"
    ]
    [verdict] = widened.schemas
    assert (verdict.subject, verdict.compatible) == ("event:crm/deal.closed", True)
    assert widened.impact[0].node == "event:crm/deal.closed"

    schema["properties"]["currency"]["enum"] = ["EUR", "USD"]
    schema_file.write_text(json.dumps(schema))
    narrowed = make_plan(capture(root), applied)
    assert narrowed.exit_code == BREAKING
    [verdict] = narrowed.schemas
    assert not verdict.compatible and verdict.refused
    assert any("currency" in p["path"] for p in verdict.problems)

    again = Plan.from_json(json.loads(json.dumps(narrowed.to_json())))
    assert (again.base_version, again.target.digest) == (1, narrowed.target.digest)


def test_each_subject_is_judged_under_its_own_compatibility_mode(tmp_path: Path) -> None:
    root = example(tmp_path, "order-to-cash")
    applied = (1, capture(root))
    crm = root / "systems" / "crm.yaml"
    schema_file = root / "schemas" / "crm-deal-closed.json"
    schema = json.loads(schema_file.read_text())
    schema["properties"]["currency"]["enum"] = ["EUR", "USD"]  # narrowed
    schema_file.write_text(json.dumps(schema))
    [under_backward] = make_plan(capture(root), applied).schemas
    assert (under_backward.mode, under_backward.compatible) == ("BACKWARD", False)

    crm.write_text(
        crm.read_text().replace("    key: id\n", "    key: id\n    compatibility: FORWARD\n")
    )
    [under_forward] = make_plan(capture(root), applied).schemas
    # Data written with the narrower schema is still readable by consumers of the old one.
    assert (under_forward.mode, under_forward.compatible) == ("FORWARD", True)

    crm.write_text(crm.read_text().replace("compatibility: FORWARD", "compatibility: NONE"))
    plan = make_plan(capture(root), applied)
    [under_none] = plan.schemas
    assert (under_none.mode, under_none.compatible) == ("NONE", True)
    assert plan.exit_code == CHANGES


def event_version(root: Path, version: int, currencies: list[str], mode: str = "BACKWARD") -> None:
    """Make the CRM's deal.closed event ``version`` with these currencies, under ``mode``."""
    schema_file = root / "schemas" / "crm-deal-closed.json"
    schema = json.loads(schema_file.read_text())
    schema["properties"]["currency"]["enum"] = currencies
    if version >= 3:  # a compatible edit, so that versions 2 and 3 differ
        schema["properties"]["currency"]["description"] = "ISO 4217 code"
    schema_file.write_text(json.dumps(schema))
    crm = root / "systems" / "crm.yaml"
    head = crm.read_text().split("    key: id\n")[0]
    crm.write_text(f"{head}    key: id\n    version: {version}\n    compatibility: {mode}\n")


@pytest.mark.parametrize(
    ("mode", "compatible", "named"),
    [
        ("BACKWARD", True, set()),
        ("BACKWARD_TRANSITIVE", False, {1}),
        ("FORWARD", False, {3}),
        ("FORWARD_TRANSITIVE", False, {1, 2, 3}),
        ("FULL", False, {3}),
        ("FULL_TRANSITIVE", False, {1, 2, 3}),
        ("NONE", True, set()),
    ],
)
def test_transitive_modes_check_every_applied_version_of_the_subject(
    tmp_path: Path, mode: str, compatible: bool, named: set[int]
) -> None:
    # v1 takes GBP; v2 (a new major version) drops it; v3 annotates the field.
    root = example(tmp_path, "order-to-cash")
    history: list[Snapshot] = []
    for version, currencies in ((1, ["EUR", "USD", "GBP"]), (2, ["EUR", "USD"])):
        event_version(root, version, currencies)
        history.append(capture(root))
    event_version(root, 3, ["EUR", "USD"])
    history += [capture(root), capture(root)]  # applied twice (a rollback): checked once
    # The new schema adds CHF to v3: compatible with v3, not with v1 (GBP is gone).
    event_version(root, 3, ["EUR", "USD", "CHF"], mode)
    asked: list[int] = []

    def applied_history() -> list[Snapshot]:
        asked.append(1)
        return history

    made = make_plan(capture(root), (4, history[-1]), history=applied_history)
    [verdict] = made.schemas
    assert (verdict.subject, verdict.mode, verdict.compatible) == (
        "event:crm/deal.closed",
        mode,
        compatible,
    )
    assert {p["version"] for p in verdict.problems} == named
    assert verdict.refused is not compatible  # the same version 3: a break is refused
    assert made.exit_code == (CHANGES if compatible else BREAKING)
    transitive = mode.endswith("_TRANSITIVE")
    assert verdict.against == ([1, 2, 3] if transitive else [3])
    assert asked == ([1] if transitive else [])  # old snapshots are loaded only when needed
    if mode == "BACKWARD_TRANSITIVE":
        [problem] = verdict.problems
        assert (problem["rule"], problem["path"]) == (
            "ENUM_ARRAY_CHANGED",  # GBP gone, CHF new
            "#/properties/currency/enum",
        )
        assert "against v1" in problem["message"]
