"""An instance stays on the definition version it started with; a new version never breaks it."""

from __future__ import annotations

import time
from pathlib import Path

from charter.processes import HubProcess

V1 = """kind: Process
name: approval
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
steps:
  - id: ask
    wait: {signal: go}
  - id: first_version_step
    transform: {version: {const: 1}, word: {from: steps.ask.word}}
"""

V2 = """kind: Process
name: approval
version: 2
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
steps:
  - id: ask_again
    wait: {signal: go}
  - id: second_version_step
    transform: {version: {const: 2}}
"""


def wait_for_status(hub: HubProcess, instance: str, status: str) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found: dict[str, object] = hub.client.get(f"/v1/processes/instances/{instance}").json()
        if found["status"] == status:
            return found
        time.sleep(0.05)
    raise AssertionError(f"instance {instance} never reached {status}: {found}")


def test_instances_in_flight_finish_on_their_version(project_dir: Path) -> None:
    process_file = project_dir / "processes" / "approval.yaml"
    process_file.parent.mkdir()
    process_file.write_text(V1)
    with HubProcess(project_dir) as hub:
        started = hub.client.post(
            "/v1/processes/approval/instances", json={"business_key": "old"}
        ).json()
        wait_for_status(hub, started["id"], "waiting")
    # The project moves on: version 1 is gone from the folder.
    process_file.write_text(V2)
    with HubProcess(project_dir) as hub:
        signalled = hub.client.post(
            f"/v1/processes/instances/{started['id']}/signal",
            json={"name": "go", "data": {"word": "yes"}},
        )
        assert signalled.status_code == 202, signalled.text
        old = wait_for_status(hub, started["id"], "completed")
        assert old["version"] == 1
        assert old["context"]["steps"]["first_version_step"] == {  # type: ignore[index]
            "version": 1,
            "word": "yes",
        }
        new = hub.client.post(
            "/v1/processes/approval/instances", json={"business_key": "new"}
        ).json()
        fresh = wait_for_status(hub, new["id"], "waiting")
        assert fresh["version"] == 2
        assert "ask_again" in fresh["waits"]  # type: ignore[operator]
