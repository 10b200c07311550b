"""What the resilience acceptance tests share: project variants and measurements."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import copy_starter


def integration(
    name: str,
    tier: str,
    event: str = "deal.closed",
    system: str = "erp",
    retry: str = "{max_attempts: 12, initial_backoff: 200ms, max_backoff: 2s}",
) -> str:
    """An integration of the starter project's order flow under another name and tier
    (from another CRM event: see `second_event`)."""
    mapping = "crm-deal-to-order" if event == "deal.closed" else f"crm-{event.replace('.', '-')}"
    return f"""\
kind: Integration
name: {name}
owner: sales-ops
tier: {tier}
timeliness: near-real-time
source: {{system: crm, trigger: webhook, event: {event}}}
entity: order@1
mapping: {mapping}@1
targets:
  - system: {system}
    mapping: order-to-{system}@1
    action: {{method: POST, path: /{name}}}
retry: {retry}
slo: {{objective: 99, latency: 60s}}
"""


def erp_settings(project: Path, text: str) -> None:
    """Replace everything after the ERP's connector (its quota) with ``text``."""
    path = project / "systems" / "erp.yaml"
    original = path.read_text()
    path.write_text(original[: original.index("quota:")] + text)


def project_with(directory: Path, files: dict[str, str], erp_tail: str) -> Path:
    project = copy_starter(directory)
    erp_settings(project, erp_tail)
    for name, body in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(body)
    return project


def second_event(project: Path, event: str) -> None:
    """Let the CRM emit ``event`` with the same payload and mapping as ``deal.closed``."""
    path = project / "systems" / "crm.yaml"
    text = path.read_text()
    block = re.search(r"  deal\.closed:\n(    .*\n)+", text)
    assert block is not None
    path.write_text(text + block.group(0).replace("deal.closed", event))
    mappings = project / "mappings"
    mapping = (mappings / "crm-deal-to-order.yaml").read_text()
    name = f"crm-{event.replace('.', '-')}"
    (mappings / f"{name}.yaml").write_text(
        mapping.replace("crm-deal-to-order", name).replace("deal.closed", event)
    )


def max_per_window(times: list[float], window: float = 1.0) -> int:
    """The most requests in any ``window`` seconds (sliding)."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def event(ce_id: str, kind: str = "deal.closed") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": ce_id,
        "source": "crm.acceptance",
        "type": kind,
        "data": {
            "id": f"D-{ce_id}",
            "account": {"id": "A-1", "name": "Acme"},
            "amount": 10.0,
            "currency": "EUR",
            "stage": "closed_won",
        },
    }


def target_system(project: Path, name: str, settings: str) -> None:
    """Another target system like the ERP (owner, mapping) with its own ``settings`` (YAML
    lines after the name: connector, breaker, ...)."""
    (project / "systems" / f"{name}.yaml").write_text(
        f"kind: System\nname: {name}\nrole: record\nowner: finance-ops\n{settings}"
    )
    mapping = (project / "mappings" / "order-to-erp.yaml").read_text()
    (project / "mappings" / f"order-to-{name}.yaml").write_text(
        mapping.replace("order-to-erp", f"order-to-{name}").replace(
            "system: erp", f"system: {name}"
        )
    )
