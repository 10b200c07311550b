"""Quota budgets kept in Redis (``CHARTER_REDIS_URL``): real hub processes on PostgreSQL,
a target recording arrivals, and the API still showing the use from the database."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import orjson
import pytest
import redis

from charter.processes import HubProcess
from tests.acceptance._recorder import RecorderProcess
from tests.acceptance._resilience import event, integration, max_per_window, project_with
from tests.acceptance.conftest import post_events, settled, wait_until

REDIS_URL = os.environ.get("CHARTER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _redis_down() -> str | None:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1) as r:
            r.ping()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {REDIS_URL} ({exc}); run scripts/services.sh"
    return None


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(_redis_down() is not None, reason=_redis_down() or ""),
]


@pytest.fixture
def target() -> Iterator[RecorderProcess]:
    with RecorderProcess() as recorder:
        yield recorder


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's own key prefix on the shared Redis; its keys are deleted afterwards."""
    name = f"charter-test:{uuid.uuid4().hex[:12]}:"
    yield name
    with redis.Redis.from_url(REDIS_URL) as r:
        keys = list(r.scan_iter(match=f"{name}*"))
        if keys:
            r.delete(*keys)


def test_two_workers_sharing_a_bucket_in_redis_stay_within_50_per_second(
    tmp_path: Path, pg_url: str, target: RecorderProcess, prefix: str
) -> None:
    project = project_with(
        tmp_path / "project",
        {
            "integrations/deal-audit.yaml": integration("deal-audit", "operational"),
            "integrations/deal-feed.yaml": integration("deal-feed", "informational"),
        },
        "quota: {rate_per_s: 50}\n",
    )
    target.fault(rate_limit_per_s=50, retry_after_s=1)
    env = {
        "CHARTER_ERP_URL": target.url,
        "CHARTER_REDIS_URL": REDIS_URL,
        "CHARTER_REDIS_PREFIX": prefix,
    }
    with ExitStack() as stack:
        hubs = [
            HubProcess(project, command="server", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
        ]
        for hub in hubs:
            stack.callback(hub.close)
            hub.start()
        api = hubs[0].client
        # 70 events, 3 deliveries each: 4 s of budget at 50/s.
        post_events(api, [event(f"qr-{n}") for n in range(70)])
        # Once the workers deliver, the target tightens its limit for a while: it
        # answers 429 with Retry-After: 1.
        wait_until(target.report, lambda r: r["received"] >= 30, 60, 0.05)
        target.fault(rate_limit_per_s=10)
        time.sleep(1.5)
        target.fault(rate_limit_per_s=50)
        stats = wait_until(hubs[0].stats, settled(210), 60)
        received = target.report()["received"]
        # Workers report their use about once a second; every request took a token.
        quota = wait_until(
            lambda: api.get("/v1/systems/erp/quota").json(),
            lambda q: (
                sum(f["granted"] for f in q["flows"]) >= received and q["used_today"] >= received
            ),
            15,
        )
        breakers = api.get("/v1/breakers").json()["breakers"]
        assert all(h.running for h in hubs[1:]), hubs[1].log_tail()

    requests = target.requests()
    times = [t for t, *_ in requests]
    assert max_per_window(times) <= 50 * 1.05, max_per_window(times)
    limited = [t for t, _, _, status in requests if status == 429]
    assert limited, "the target never answered 429"
    early = [(t429, t) for t429 in limited for t in times if t429 + 0.15 <= t < t429 + 1.0]
    assert not early, f"{len(early)} requests during a Retry-After pause, e.g. {early[:3]}"
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (210, 0)
    assert target.report() == {"received": len(requests), "applied": 210, "duplicates": 0}
    # The bucket the workers shared is the one in Redis, under the prefix asked for ...
    with redis.Redis.from_url(REDIS_URL) as r:
        raw = r.get(f"{prefix}bucket:erp")
    assert raw is not None, "no bucket in Redis: the workers did not use it"
    bucket = orjson.loads(raw)
    assert bucket["day_count"] == len(requests)
    assert len(bucket["workers"]) == 2
    # ... and the API shows it and the use per integration, from the database's copy.
    assert quota["used_today"] == len(requests)
    assert quota["workers"] == 2
    flows = {f["flow"]: f for f in quota["flows"]}
    assert set(flows) == {"deal-to-erp-order", "deal-audit", "deal-feed"}
    assert sum(f["granted"] for f in flows.values()) == len(requests)
    assert sum(f["rate_limited"] for f in flows.values()) == len(limited)
    # The ERP's breaker record came from Redis too (closed, since the workers first synced).
    [erp] = [b for b in breakers if b["system"] == "erp"]
    assert erp["state"] == "closed" and erp["since"] is not None, erp
