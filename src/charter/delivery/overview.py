"""What the API and the CLI show of quotas and breakers, read from the shared state.

Quota use per flow is reported by the workers about once a second; bucket and
breaker rows are current on PostgreSQL and at most about a second old on SQLite
(where one process keeps them in memory and saves them) and with Redis (where
one worker at a time copies them to the database).
"""

from __future__ import annotations

from typing import Any

from charter.catalog.loader import Project
from charter.delivery.breaker import BreakerPolicy, BreakerRecord, BreakerState
from charter.delivery.quota import TIERS, BucketState, QuotaPolicy, refill
from charter.errors import NotFound
from charter.store.resilience import BreakerKey, ResilienceStore


def _system(project: Project, system: str) -> None:
    if system not in project.systems:
        known = ", ".join(sorted(project.systems)) or "none"
        raise NotFound(
            f"no system {system!r} in the catalog", fix=f"use one of the systems: {known}"
        )


def quota_report(
    project: Project, store: ResilienceStore, system: str | None = None
) -> list[dict[str, Any]]:
    """The budget of each system with a quota (or of ``system``), with its use per flow."""
    if system is not None:
        _system(project, system)
        if project.systems[system].quota is None:
            raise NotFound(
                f"system {system!r} has no quota",
                fix=f"declare 'quota: {{rate_per_s: ...}}' on the system {system!r}",
            )
    now = store.now()
    buckets = store.load_buckets()
    usage = store.usage(system)
    report = []
    for name, declared in sorted(project.systems.items()):
        if declared.quota is None or (system is not None and name != system):
            continue
        policy = QuotaPolicy.of(declared.quota)
        saved = buckets.get(name)
        state = refill(
            BucketState.from_json(saved) if saved else BucketState.full(policy, now), policy, now
        )
        served = sum(state.served.values())
        flows = [
            {
                "flow": row["flow"],
                "tier": row["tier"],
                "granted": row["granted"],
                "avg_wait_ms": round(1000 * row["waited_s"] / row["granted"], 2)
                if row["granted"]
                else None,
                "deferred": row["deferred"],
                "rate_limited": row["rate_limited"],
                "updated_at": row["updated_at"],
            }
            for row in usage
            if row["system"] == name
        ]
        report.append(
            {
                "system": name,
                "rate_per_s": policy.rate_per_s,
                "burst": policy.burst,
                "daily": policy.daily,
                "concurrency": policy.concurrency,
                "min_shares": {t.value: policy.shares.get(t, 0.0) for t in TIERS},
                "tokens": round(state.tokens, 3),
                "paused": state.paused_until > now,
                "paused_until": state.paused_until if state.paused_until > now else None,
                "used_today": state.day_count,
                "recent_share": {
                    t.value: round(state.served.get(t.value, 0.0) / served, 3) if served else 0.0
                    for t in TIERS
                },
                "workers": len(state.workers),
                "flows": flows,
            }
        )
    return report


def breaker_report(project: Project, store: ResilienceStore) -> list[dict[str, Any]]:
    """Every breaker: the systems' (closed until something happens) and each endpoint's seen."""
    saved = store.load_breakers()
    rows = []
    keys = {BreakerKey(name) for name, s in project.systems.items() if s.breaker.enabled}
    keys |= {k for k in saved if k.system in project.systems}
    for key in sorted(keys, key=str):
        settings = project.systems[key.system].breaker
        if key.endpoint is None and settings.per_endpoint and key not in saved:
            continue
        data = saved.get(key)
        record = BreakerRecord.from_json(data) if data else BreakerRecord()
        policy = BreakerPolicy.of(settings, 0.0)
        rows.append(
            {
                "system": key.system,
                "endpoint": key.endpoint,
                "state": record.state.value,
                "since": record.since or None,
                "consecutive_failures": record.consecutive,
                "calls_in_window": record.calls,
                "failures_in_window": record.failures,
                "last_error": record.last_error,
                "probe_at": record.reopens_at(policy)
                if record.state is BreakerState.OPEN
                else None,
                "settings": settings.model_dump(),
            }
        )
    return rows


def breaker_transitions(
    project: Project, store: ResilienceStore, system: str, limit: int = 100
) -> list[dict[str, Any]]:
    """A system's breaker transitions, newest first."""
    _system(project, system)
    return [
        {k: row[k] for k in ("endpoint", "from_state", "to_state", "at", "reason", "worker")}
        for row in store.transitions(system, limit)
    ]
