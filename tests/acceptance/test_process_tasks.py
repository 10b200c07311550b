"""Project task handlers and subprocesses, run by a real hub."""

from __future__ import annotations

import time
from pathlib import Path

from charter.processes import HubProcess

TASKS = '''"""Task handlers of this project."""

from pathlib import Path

CALLS = Path(__file__).parent / "calls.txt"


def score(data, context):
    with CALLS.open("a") as calls:
        calls.write(context.idempotency_key + "\\n")
    return {"score": len(data["customer"]) * 10}


async def fail_for_ever(data, context):
    raise RuntimeError("the scoring service is down")


HANDLERS = {"score": score, "fail": fail_for_ever}
'''

PROCESSES = """kind: Process
name: parent
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
steps:
  - id: scored
    task: {handler: score, input: {customer: {from: input.customer}}}
  - id: child
    subprocess:
      process: child
      key: {from: input.customer}
      input: {points: {from: steps.scored.score}}
  - id: summary
    transform: {doubled: {from: steps.child.double.value}}
---
kind: Process
name: child
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
steps:
  - id: double
    transform: {value: {expr: "input.points * 2"}}
---
kind: Process
name: broken
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
on_failure: hold
steps:
  - id: scored
    task: {handler: fail}
"""


def wait_for(hub: HubProcess, instance: str, status: str) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found: dict[str, object] = hub.client.get(f"/v1/processes/instances/{instance}").json()
        if found["status"] == status:
            return found
        time.sleep(0.05)
    raise AssertionError(f"instance {instance} never reached {status}: {found}")


def test_tasks_and_subprocesses_run_once_and_report_back(project_dir: Path) -> None:
    (project_dir / "tasks.py").write_text(TASKS)
    (project_dir / "processes").mkdir()
    (project_dir / "processes" / "parent.yaml").write_text(PROCESSES)
    with HubProcess(project_dir) as hub:
        parent = hub.client.post(
            "/v1/processes/parent/instances",
            json={"business_key": "acme", "input": {"customer": "acme"}},
        ).json()
        done = wait_for(hub, parent["id"], "completed")
        assert done["context"]["steps"]["summary"] == {"doubled": 80}  # type: ignore[index]
        children = hub.client.get("/v1/processes/instances", params={"process": "child"}).json()
        [child] = children["instances"]
        assert child["parent_id"] == parent["id"]
        assert child["status"] == "completed"

        broken = hub.client.post(
            "/v1/processes/broken/instances", json={"business_key": "b-1"}
        ).json()
        held = wait_for(hub, broken["id"], "failed")
        assert "the scoring service is down" in str(held["reason"])
        assert held["steps"]["scored"]["attempt"] == 2  # type: ignore[index]
    calls = (project_dir / "calls.txt").read_text().split()
    assert calls == [f"{parent['id']}:scored"]
