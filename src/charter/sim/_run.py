"""Serve one simulator with uvicorn, in the foreground."""

from __future__ import annotations

import random

import uvicorn
from starlette.applications import Starlette

from charter.sim._analytics import create_analytics_app
from charter.sim._crm import create_crm_app
from charter.sim._erp import create_erp_app
from charter.sim._noop import create_noop_app
from charter.sim._payments import create_payments_app
from charter.sim._portal import create_portal_app
from charter.sim._warehouse import create_warehouse_app

SIM_NAMES = ("analytics", "crm", "erp", "noop", "payments", "portal", "warehouse")


def build_sim(name: str, *, hub_url: str | None = None, seed: int = 7) -> Starlette:
    """The app for simulator ``name``; raises ValueError for a name not in `SIM_NAMES`."""
    if name == "analytics":
        return create_analytics_app(rng=random.Random(seed))
    if name == "crm":
        return create_crm_app(hub_url, seed=seed)
    if name == "erp":
        return create_erp_app(rng=random.Random(seed))
    if name == "noop":
        return create_noop_app(rng=random.Random(seed))
    if name == "payments":
        return create_payments_app(rng=random.Random(seed))
    if name == "portal":
        return create_portal_app(rng=random.Random(seed))
    if name == "warehouse":
        return create_warehouse_app(hub_url, seed=seed)
    raise ValueError(f"unknown simulator {name!r}; choose one of {', '.join(SIM_NAMES)}")


def run_sim(
    name: str, *, host: str = "127.0.0.1", port: int, hub_url: str | None = None, seed: int = 7
) -> None:
    """Serve simulator ``name`` (one of `SIM_NAMES`) until SIGTERM or SIGINT.

    ``hub_url`` is where the CRM and the warehouse push their events; ``seed``
    makes deals, carriers, injected errors and declines repeatable.
    """
    app = build_sim(name, hub_url=hub_url, seed=seed)
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        server_header=False,
        # A client holding a keep-alive connection must not keep a stopping sim alive.
        timeout_graceful_shutdown=3,
    )
