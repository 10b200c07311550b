"""Plan, apply, history, rollback and impact through the CLI, as an integration team runs them.

The project is the order-to-cash example on its embedded SQLite database; a
hub started on it shows that what runs is the applied catalog, not the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from charter.processes import HubProcess
from tests.acceptance.test_cli import charter, one_line_error, table_rows

SCHEMA = Path("schemas") / "crm-deal-closed.json"
EVENTS = "/v1/systems/crm/events"


@pytest.fixture
def o2c(tmp_path: Path) -> Path:
    done = charter("init", "o2c", "--example", "order-to-cash", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "o2c"


def edit_schema(project: Path, change: Any) -> None:
    path = project / SCHEMA
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def plan(project: Path, *extra: str) -> tuple[int, str]:
    done = charter("plan", "-p", str(project), *extra)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 2, 3), done.stderr
    return done.returncode, done.stdout


def asked(plan_file: Path) -> list[str]:
    """The teams a plan file asks to approve, as a reviewer reads them."""
    return sorted({a["team"] for a in json.loads(plan_file.read_text())["approvals"]})


def apply(
    project: Path, plan_file: Path, reason: str = "test", *extra: str
) -> tuple[int, str, str]:
    """Apply with the approval of every team the plan asks for, unless ``extra`` says."""
    approvals = extra or tuple(f"--approved-by={team}" for team in asked(plan_file))
    done = charter(
        "apply",
        str(plan_file),
        "-p",
        str(project),
        "--by",
        "alice",
        "--reason",
        reason,
        *approvals,
    )
    return done.returncode, done.stdout, done.stderr


def deal(ce_id: str, currency: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": ce_id,
        "source": "crm.governance",
        "type": "deal.closed",
        "data": {
            "id": f"D-{ce_id}",
            "account": {"id": "A-1", "name": "Acme"},
            "amount": 10.0,
            "currency": currency,
            "stage": "closed_won",
        },
    }


def test_breaking_change_is_refused_compatible_one_applies_and_rollback_restores(
    o2c: Path,
) -> None:
    first = o2c / "first.json"
    code, shown = plan(o2c, "--out", str(first))
    assert code == 2 and "to create" in shown
    code, shown, err = apply(o2c, first, "first version")
    assert code == 0, err
    assert "Applied as catalog version 1" in shown
    code, shown = plan(o2c)
    assert code == 0 and "No changes" in shown

    # A CRM change that renames a pick-list value (GBP -> UKP) and removes a field.
    def breaking(schema: dict[str, Any]) -> None:
        schema["properties"]["currency"]["enum"] = ["EUR", "USD", "UKP"]
        del schema["properties"]["closed_at"]

    original = (o2c / SCHEMA).read_text()
    edit_schema(o2c, breaking)
    risky = o2c / "risky.json"
    code, shown = plan(o2c, "--out", str(risky))
    assert code == 3, shown
    assert "breaking, same version: refused" in shown
    assert "/properties/currency" in shown
    radius = {(r[1], r[2]): r for r in table_rows(shown) if len(r) == 5}
    assert ("event", "crm/deal.closed") in radius
    assert radius[("process", "order-to-cash")][3] == "finance-ops"
    approvals = {r[0] for r in table_rows(shown) if len(r) == 2}
    assert {"sales-ops", "finance-ops"} <= approvals
    code, _, err = apply(o2c, risky)
    assert code == 1
    assert "without a new major version" in err and "currency" in err

    # A compatible change: one more currency.
    (o2c / SCHEMA).write_text(original)
    edit_schema(o2c, lambda s: s["properties"]["currency"]["enum"].append("CHF"))
    compatible = o2c / "compatible.json"
    code, shown = plan(o2c, "--out", str(compatible))
    assert code == 2, shown
    assert "compatible" in shown
    code, shown, err = apply(o2c, compatible, "accept CHF")
    assert code == 0, err
    assert "Applied as catalog version 2" in shown

    hub = HubProcess(o2c).start()
    try:
        assert hub.client.post(EVENTS, json=deal("chf-1", "CHF")).status_code == 202
    finally:
        hub.close()

    done = charter("rollback", "-p", str(o2c), "--by", "bob", "--reason", "CHF too early")
    assert "approval missing from finance-ops, sales-ops:" in one_line_error(done)
    done = charter(
        "rollback",
        "-p",
        str(o2c),
        "--by",
        "bob",
        "--reason",
        "CHF too early",
        "--approved-by",
        "sales-ops",
        "--approved-by",
        "finance-ops",
    )
    assert done.returncode == 0, done.stderr
    assert "Rolled back as catalog version 3" in done.stdout
    done = charter("history", "-p", str(o2c))
    rows = [r for r in table_rows(done.stdout) if r[0].isdigit()]
    assert [(r[0], r[2], r[3], r[5]) for r in rows] == [
        ("3", "bob", "rollback:1", "CHF too early"),
        ("2", "alice", "apply", "accept CHF"),
        ("1", "alice", "apply", "first version"),
    ]
    # The hub runs version 3 (= version 1): CHF is refused again, though the folder has it.
    hub = HubProcess(o2c).start()
    try:
        refused = hub.client.post(EVENTS, json=deal("chf-2", "CHF"))
        assert refused.status_code == 422, refused.text
        assert hub.client.post(EVENTS, json=deal("eur-1", "EUR")).status_code == 202
    finally:
        hub.close()
    code, shown = plan(o2c)
    assert code == 2 and "CHF" in shown


def test_a_plan_made_before_another_apply_is_refused(o2c: Path) -> None:
    first = o2c / "first.json"
    assert plan(o2c, "--out", str(first))[0] == 2
    assert apply(o2c, first)[0] == 0
    edit_schema(o2c, lambda s: s["properties"]["currency"]["enum"].append("CHF"))
    stale = o2c / "stale.json"
    assert plan(o2c, "--out", str(stale))[0] == 2
    edit_schema(o2c, lambda s: s["properties"]["currency"]["enum"].append("JPY"))
    fresh = o2c / "fresh.json"
    assert plan(o2c, "--out", str(fresh))[0] == 2
    assert apply(o2c, fresh)[0] == 0
    code, _, err = apply(o2c, stale)
    assert code == 1
    assert "plan was made against version 1" in err and "charter plan" in err
    # The plan file is the change: edited by hand, it is refused.
    body = json.loads(stale.read_text())
    body["target"]["files"]["charter.yaml"] += "\n# edited\n"
    stale.write_text(json.dumps(body))
    assert "do not match its digest" in one_line_error(
        charter("apply", str(stale), "-p", str(o2c), "--reason", "x")
    )
    (o2c / "junk.json").write_text("{not json")
    assert "is not JSON" in one_line_error(
        charter("apply", str(o2c / "junk.json"), "-p", str(o2c), "--reason", "x")
    )
    assert "cannot read" in one_line_error(
        charter("apply", str(o2c / "none.json"), "-p", str(o2c), "--reason", "x")
    )


def crm_event(project: Path, version: int, mode: str) -> None:
    """Declare the CRM's deal.closed event ``version`` under compatibility ``mode``."""
    crm = project / "systems" / "crm.yaml"
    head = crm.read_text().split("    key: id\n")[0]
    crm.write_text(f"{head}    key: id\n    version: {version}\n    compatibility: {mode}\n")


def test_apply_needs_the_approvals_the_plan_asks_for_or_a_recorded_reason_to_skip_them(
    o2c: Path,
) -> None:
    # The first apply needs no approval: no team owns anything applied yet.
    first = o2c / "first.json"
    assert plan(o2c, "--out", str(first))[0] == 2
    assert asked(first) == []
    code, shown, err = apply(o2c, first, "first version")
    assert code == 0, err
    assert "Applied as catalog version 1" in shown and "without the approval" not in shown

    # A compatible change: the owners of what changes must approve it.
    edit_schema(o2c, lambda s: s["properties"]["currency"]["enum"].append("CHF"))
    change = o2c / "chf.json"
    assert plan(o2c, "--out", str(change))[0] == 2
    teams = asked(change)
    assert "sales-ops" in teams
    refused = one_line_error(charter("apply", str(change), "-p", str(o2c), "--reason", "x"))
    assert f"approval missing from {', '.join(teams)}:" in refused
    assert "--approved-by sales-ops" in refused and "--skip-approvals REASON" in refused
    if len(teams) > 1:
        # Only the teams still missing are named.
        code, _, err = apply(o2c, change, "x", *(f"--approved-by={t}" for t in teams[1:]))
        assert code == 1 and f"approval missing from {teams[0]}:" in err
    # A team that is not in the catalog is a mistake, not an approval.
    code, _, err = apply(o2c, change, "x", "--approved-by", "sales-opps")
    assert code == 1 and "--approved-by 'sales-opps' is not a team of the catalog" in err
    assert "sales-ops" in err
    code, shown, err = apply(o2c, change, "accept CHF")
    assert code == 0, err
    assert "Applied as catalog version 2" in shown and "without the approval" not in shown

    # A breaking change as a new major version: its consumers' owners must approve too.
    edit_schema(o2c, lambda s: s["properties"]["currency"].update(enum=["EUR", "USD"]))
    crm_event(o2c, 2, "BACKWARD")
    breaking = o2c / "breaking.json"
    code, shown = plan(o2c, "--out", str(breaking))
    assert code == 3 and "breaking, new major version" in shown
    needed = {(r[0], r[1]) for r in table_rows(shown) if len(r) == 2}
    assert ("finance-ops", "process order-to-cash consumes a breaking change") in needed
    code, _, err = apply(o2c, breaking, "drop GBP", "--approved-by", "sales-ops")
    assert code == 1 and "approval missing from finance-ops: " in err
    assert "consumes a breaking change" in err
    code, _, err = apply(o2c, breaking, "drop GBP", "--skip-approvals", "  ")
    assert code == 1 and "--skip-approvals needs a reason" in err
    code, shown, err = apply(
        o2c,
        breaking,
        "drop GBP",
        "--approved-by",
        "sales-ops",
        "--skip-approvals",
        "finance-ops lead on leave; CFO agreed by mail",
    )
    assert code == 0, err
    assert "Applied as catalog version 3" in shown
    assert "without the approval of finance-ops" in shown

    done = charter("history", "-p", str(o2c))
    rows = {r[0]: r for r in table_rows(done.stdout) if r[0].isdigit()}
    assert rows["3"][6] == (
        "approved by sales-ops; skipped finance-ops: finance-ops lead on leave; CFO agreed by mail"
    )
    assert rows["2"][6] == "approved by " + ", ".join(teams)
    assert rows["1"][6] == "none needed"
    done = charter("history", "-p", str(o2c), "--json")
    assert done.returncode == 0, done.stderr
    latest = json.loads(done.stdout)["versions"][0]["approvals"]
    assert (latest["approved_by"], latest["skipped"], latest["skip_reason"]) == (
        ["sales-ops"],
        ["finance-ops"],
        "finance-ops lead on leave; CFO agreed by mail",
    )
    assert {
        "team": "finance-ops",
        "reason": "process order-to-cash consumes a breaking change",
    } in (latest["required"])


def test_a_transitive_mode_checks_the_change_against_every_applied_version(o2c: Path) -> None:
    first = o2c / "first.json"
    assert plan(o2c, "--out", str(first))[0] == 2
    assert apply(o2c, first)[0] == 0
    # Version 2 drops GBP: breaking, so published as a new major version.
    edit_schema(o2c, lambda s: s["properties"]["currency"].update(enum=["EUR", "USD"]))
    crm_event(o2c, 2, "BACKWARD")
    second = o2c / "second.json"
    assert plan(o2c, "--out", str(second))[0] == 3
    assert apply(o2c, second)[0] == 0

    # Adding CHF under version 2 reads all that version 2 wrote...
    edit_schema(o2c, lambda s: s["properties"]["currency"]["enum"].append("CHF"))
    code, shown = plan(o2c)
    assert code == 2 and "compatible" in shown
    # ...but not what version 1 wrote (GBP): BACKWARD_TRANSITIVE says breaking, naming v1.
    crm_event(o2c, 2, "BACKWARD_TRANSITIVE")
    transitive = o2c / "transitive.json"
    code, shown = plan(o2c, "--out", str(transitive))
    assert code == 3, shown
    assert "breaking, same version: refused" in shown and "(against v1, v2)" in shown
    code, shown = plan(o2c, "--json")
    [verdict] = json.loads(shown)["schemas"]
    assert (verdict["mode"], verdict["compatible"], verdict["against"]) == (
        "BACKWARD_TRANSITIVE",
        False,
        [1, 2],
    )
    assert [(p["rule"], p["version"]) for p in verdict["problems"]] == [("ENUM_ARRAY_CHANGED", 1)]
    code, _, err = apply(o2c, transitive)
    assert code == 1 and "without a new major version" in err and "currency" in err


def test_impact_names_what_a_system_or_a_field_reaches_and_who_owns_it(
    tmp_path: Path,
) -> None:
    assert charter("init", "shop", cwd=tmp_path).returncode == 0
    shop = tmp_path / "shop"
    done = charter("impact", "system:crm", "-p", str(shop), "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    hops = {a["node"]: a["hops"] for a in found["affected"]}
    assert hops["system:crm"] == 0
    assert hops["event:crm/deal.closed"] == 1
    assert hops["integration:deal-to-erp-order"] == 2
    assert hops["system:erp"] == 3
    done = charter("impact", "field:order.status", "-p", str(shop), "--json")
    assert done.returncode == 0, done.stderr
    nodes = [a["node"] for a in json.loads(done.stdout)["affected"]]
    assert nodes[:2] == ["field:order.status", "mapping:order-to-erp@1"]
    assert "integration:deal-to-erp-order" in nodes and "system:erp" in nodes
    unknown = one_line_error(charter("impact", "system:nope", "-p", str(shop)))
    assert "'system:nope' is not in the catalog" in unknown and "system:crm" in unknown
