"""Simulated business systems serving real HTTP, with fault injection, for demos and tests.

- ERP (`create_erp_app`): a target storing orders once per Idempotency-Key.
- CRM (`create_crm_app`): a source pushing ``deal.closed`` CloudEvents to the hub.
- No-op (`create_noop_app`): a target that accepts everything, for throughput ceilings.

`run_sim` serves one in the foreground (``python -m charter.sim``); `spawn`
starts one in a child process and returns a `SimProcess` handle.
"""

from charter.sim._crm import create_crm_app
from charter.sim._erp import create_erp_app
from charter.sim._noop import create_noop_app
from charter.sim._run import run_sim
from charter.sim._spawn import SimProcess, free_port, spawn

__all__ = [
    "SimProcess",
    "create_crm_app",
    "create_erp_app",
    "create_noop_app",
    "free_port",
    "run_sim",
    "spawn",
]
