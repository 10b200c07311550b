"""Fallback while the target's breaker is open: the ERP answers 503 for good, its breaker
opens, and once it has been open for ``after`` every delivery goes to the fallback (a
backup system, or a file drop), exactly once, with the delivery records saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.hub import delivery_key
from charter.processes import HubProcess
from tests.acceptance._recorder import RecorderProcess
from tests.acceptance._resilience import event, project_with, target_system
from tests.acceptance.conftest import post_events, settled, wait_until

INTEGRATION = "deal-to-erp-order"
ERP_TAIL = "quota: {rate_per_s: 1000}\nbreaker: {failures: 3, open_for: 2s}\n"
EVENTS = 60


def with_fallback(directory: Path, fallback: str) -> Path:
    """The starter project whose ERP target falls back to ``fallback`` after 1 s open."""
    project = project_with(directory, {}, ERP_TAIL)
    path = project / "integrations" / f"{INTEGRATION}.yaml"
    action = "    action: {method: POST, path: /orders}\n"
    text = path.read_text()
    assert action in text
    path.write_text(text.replace(action, action + f"    fallback: {{after: 1s, {fallback}}}\n"))
    return project


def hubs(project: Path, env: dict[str, str], database: str | None) -> list[HubProcess]:
    if database is None:
        return [HubProcess(project, env=env)]
    return [
        HubProcess(project, command="server", env=env, database=database),
        HubProcess(project, command="worker", env=env, database=database),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: ``charter up`` on SQLite; else a PostgreSQL URL for a server and a worker."""
    yield None if request.param == "sqlite" else request.getfixturevalue("pg_url")


def run_outage(api_hubs: list[HubProcess], erp: RecorderProcess) -> tuple[list[str], Any]:
    """Fail the ERP for good, post events before and after its breaker opens, and wait
    until every delivery is settled; returns the hub ids and the final stats."""
    with ExitStack() as stack:
        for hub in api_hubs:
            stack.callback(hub.close)
            hub.start()
        api = api_hubs[0].client
        erp.fault(status=503)
        ids = post_events(api, [event(f"f-{n}") for n in range(EVENTS // 2)])
        wait_until(
            lambda: api.get("/v1/breakers").json()["breakers"],
            lambda rows: any(r["system"] == "erp" and r["state"] != "closed" for r in rows),
            # A worker process answers no readiness probe: allow for its start on a busy host.
            90,
        )
        ids += post_events(api, [event(f"f-{n}") for n in range(EVENTS // 2, EVENTS)])
        stats = wait_until(api_hubs[0].stats, settled(EVENTS), 120)
        deliveries = api.get("/v1/deliveries", params={"limit": 1000}).json()["deliveries"]
        attempts = [
            api.get(f"/v1/deliveries/{d['id']}").json()["attempts_log"] for d in deliveries[:5]
        ]
        metrics = api.get("/metrics").text
    return ids, (stats, deliveries, attempts, metrics)


def test_a_backup_system_takes_every_delivery_once(tmp_path: Path, database: str | None) -> None:
    project = with_fallback(
        tmp_path / "project",
        "to: {system: erp-backup, mapping: order-to-erp-backup@1}",
    )
    target_system(
        project, "erp-backup", "connector: {kind: http, base_url: '${CHARTER_BACKUP_URL}'}\n"
    )
    with RecorderProcess() as erp, RecorderProcess() as backup:
        env = {"CHARTER_ERP_URL": erp.url, "CHARTER_BACKUP_URL": backup.url}
        ids, (stats, deliveries, attempts, metrics) = run_outage(hubs(project, env, database), erp)
        erp_report, backup_report = erp.report(), backup.report()
        backup_keys = [key for _, key, _, status in backup.requests() if status == 201]

    # Nothing lost, nothing twice: every event reached the backup once, under its own key.
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (EVENTS, 0)
    assert stats["deliveries"]["fallback"] == EVENTS
    assert (backup_report["applied"], backup_report["duplicates"]) == (EVENTS, 0)
    assert sorted(backup_keys) == sorted(
        delivery_key(hub_id, INTEGRATION) + ":fallback" for hub_id in ids
    )
    # The ERP saw the calls that opened its breaker (and probes), and applied none.
    assert erp_report["received"] >= 3 and erp_report["applied"] == 0
    # The records say where each delivery went.
    assert len(deliveries) == EVENTS
    assert {(d["status"], d["target"], d["fallback"]) for d in deliveries} == {
        ("delivered", "erp", "erp-backup")
    }
    for log in attempts:
        assert (log[-1]["outcome"], log[-1]["status_code"], log[-1]["fallback"]) == (
            "delivered",
            201,
            "erp-backup",
        )
    assert f'charter_deliveries_fallback{{integration="{INTEGRATION}"}} {EVENTS}.0' in metrics


def test_a_file_drop_takes_every_delivery_once(tmp_path: Path) -> None:
    project = with_fallback(tmp_path / "project", "file: {dir: dropbox}")
    with RecorderProcess() as erp:
        ids, (stats, deliveries, _attempts, _metrics) = run_outage(
            hubs(project, {"CHARTER_ERP_URL": erp.url}, None), erp
        )
        erp_report = erp.report()

    files = sorted((project / "dropbox").glob("erp-*.jsonl"))
    lines = [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (EVENTS, 0)
    assert stats["deliveries"]["fallback"] == EVENTS
    # One line per event: none lost, none twice, each with the mapped payload and its key.
    assert sorted(line["event_id"] for line in lines) == sorted(ids)
    assert {line["idempotency_key"] for line in lines} == {
        delivery_key(hub_id, INTEGRATION) for hub_id in ids
    }
    assert {line["payload"]["external_ref"] for line in lines} == {
        f"D-f-{n}" for n in range(EVENTS)
    }
    assert erp_report["applied"] == 0
    shown = {f"file:dropbox/{path.name}" for path in files}
    assert {d["fallback"] for d in deliveries} <= shown
    assert {d["status"] for d in deliveries} == {"delivered"}

    # The command line lists where they went.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["COLUMNS"] = "250"
    done = subprocess.run(
        [sys.executable, "-m", "charter", "deliveries", "--project", str(project), "--limit", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("erp -> file:dropbox/erp-") == 3
