"""Simulated business systems serving real HTTP, with fault injection, for demos and tests.

Sources, which push CloudEvents to the hub until it acknowledges them:

- CRM (`create_crm_app`): ``deal.closed`` events.
- Warehouse (`create_warehouse_app`): takes shipments, pushes ``shipment.dispatched``.

Targets, which apply each write once per Idempotency-Key and count honestly in
``/admin/report``:

- ERP (`create_erp_app`): orders, cancellations and invoices.
- Payment gateway (`create_payments_app`): captures, declines and refunds.
- Customer portal (`create_portal_app`): the latest status of each order.
- Analytics (`create_analytics_app`): any events, counted by type.
- No-op (`create_noop_app`): accepts everything, for throughput ceilings.

Every one takes runtime faults through ``GET/POST/DELETE /admin/fault`` (see
`charter.sim._faults`): outage, error rate, latency, a rate limit answered 429
with Retry-After, connection resets, a trickled body; the CRM also switches
the version of the deals it sends.

`run_sim` serves one in the foreground (``python -m charter.sim``); `spawn`
starts one in a child process and returns a `SimProcess` handle.

`charter.sim.proxy.FaultProxy` is a TCP proxy for socket-level faults
(latency, reset, blackhole, bandwidth); `spawn_proxy` starts one in a child
process and returns a `ProxyProcess` handle.
"""

from charter.sim._analytics import create_analytics_app
from charter.sim._crm import create_crm_app
from charter.sim._erp import create_erp_app
from charter.sim._noop import create_noop_app
from charter.sim._payments import create_payments_app
from charter.sim._portal import create_portal_app
from charter.sim._run import SIM_NAMES, run_sim
from charter.sim._spawn import ProxyProcess, SimProcess, free_port, spawn, spawn_proxy
from charter.sim._warehouse import create_warehouse_app

__all__ = [
    "SIM_NAMES",
    "ProxyProcess",
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
    "spawn_proxy",
]
