"""What several integration tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

TWO_SIGNALS = """\
kind: Process
name: two-signals
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: first
    wait: {signal: one}
  - id: second
    wait: {signal: two}
"""


@pytest.fixture
def two_signals(project_dir: Path) -> Path:
    """The starter project with ``two-signals``, a process that waits for two signals in
    turn (nothing due while it waits)."""
    processes = project_dir / "processes"
    processes.mkdir(exist_ok=True)
    (processes / "two-signals.yaml").write_text(TWO_SIGNALS)
    return project_dir
