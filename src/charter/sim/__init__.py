"""Simulated business systems serving real HTTP, with fault injection, for demos and tests.

Sources, which push CloudEvents to the hub until it acknowledges them:

- CRM (`create_crm_app`): ``deal.closed`` events.
- Warehouse (`create_warehouse_app`): takes shipments, pushes ``shipment.dispatched``.

Targets, which apply each write once per Idempotency-Key, count honestly in
``/admin/report`` and take runtime faults through ``/admin/fault``:

- ERP (`create_erp_app`): orders, cancellations and invoices.
- Payment gateway (`create_payments_app`): captures, declines and refunds.
- Customer portal (`create_portal_app`): the latest status of each order.
- Analytics (`create_analytics_app`): any events, counted by type.
- No-op (`create_noop_app`): accepts everything, for throughput ceilings.

`run_sim` serves one in the foreground (``python -m charter.sim``); `spawn`
starts one in a child process and returns a `SimProcess` handle.
"""

from charter.sim._analytics import create_analytics_app
from charter.sim._crm import create_crm_app
from charter.sim._erp import create_erp_app
from charter.sim._noop import create_noop_app
from charter.sim._payments import create_payments_app
from charter.sim._portal import create_portal_app
from charter.sim._run import SIM_NAMES, run_sim
from charter.sim._spawn import SimProcess, free_port, spawn
from charter.sim._warehouse import create_warehouse_app

__all__ = [
    "SIM_NAMES",
    "SimProcess",
    "create_analytics_app",
    "create_crm_app",
    "create_erp_app",
    "create_noop_app",
    "create_payments_app",
    "create_portal_app",
    "create_warehouse_app",
    "free_port",
    "run_sim",
    "spawn",
]
