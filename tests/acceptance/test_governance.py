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


def apply(project: Path, plan_file: Path, reason: str = "test") -> tuple[int, str, str]:
    done = charter("apply", str(plan_file), "-p", str(project), "--by", "alice", "--reason", reason)
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
