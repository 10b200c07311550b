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
