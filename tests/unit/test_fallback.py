"""Fallback while a target's breaker is open: the catalog's checks, the worker's choice
between waiting and the fallback (never for a quota wait), and the file drop."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import Project, load_project
from charter.catalog.model import Fallback, FileDrop
from charter.delivery import DeliveryWorker
from charter.delivery.breaker import BreakerRecord, BreakerState
from charter.delivery.fallback import DropFolder, drop_file_name, park_until
from charter.delivery.guard import Deferred, Resilience
from charter.delivery.quota import QuotaPolicy
from charter.delivery.shared import LocalState
from charter.errors import CatalogError, Problem, TargetUnavailable
from charter.hub import Router, delivery_key
from charter.store import MemoryStore
from charter.store.resilience import BreakerKey
from tests.unit.test_worker import SETTINGS, Reply, ScriptedTarget, ingest

INTEGRATION_FILE = "integrations/deal-to-erp-order.yaml"
INTEGRATION = "deal-to-erp-order"
ACTION = "    action: {method: POST, path: /orders}\n"
T0 = 1_700_000_000.0


def with_backup(project: Path) -> Path:
    """Add ``erp-backup``: a system like the ERP with its own mapping of the order."""
    (project / "systems" / "erp-backup.yaml").write_text(
        "kind: System\nname: erp-backup\nrole: record\nowner: finance-ops\n"
        "connector: {kind: http, base_url: 'http://127.0.0.1:9'}\n"
    )
    mapping = (project / "mappings" / "order-to-erp.yaml").read_text()
    (project / "mappings" / "order-to-erp-backup.yaml").write_text(
        mapping.replace("order-to-erp", "order-to-erp-backup").replace(
            "system: erp", "system: erp-backup"
        )
    )
    return project


def set_fallback(project: Path, yaml: str) -> Path:
    """Give the integration's ERP target ``fallback: <yaml>`` (indented under the target)."""
    path = project / INTEGRATION_FILE
    text = path.read_text()
    assert ACTION in text
    path.write_text(text.replace(ACTION, ACTION + f"    fallback: {yaml}\n", 1))
    return project


def problems(project: Path) -> list[Problem]:
    with pytest.raises(CatalogError) as caught:
        load_project(project)
    return caught.value.problems


def only(project: Path) -> Problem:
    [problem] = problems(project)
    return problem


# The catalog -----------------------------------------------------------------------------


def test_a_fallback_to_another_system_loads_with_its_defaults(project_dir: Path) -> None:
    set_fallback(
        with_backup(project_dir),
        "{after: 30s, to: {system: erp-backup, mapping: order-to-erp-backup@1}}",
    )
    [target] = load_project(project_dir).integrations[INTEGRATION].targets
    assert target.fallback is not None
    assert target.fallback.after == 30.0
    assert target.fallback.to is not None and target.fallback.to.action is None
    assert target.fallback.describe() == "erp-backup"


def test_park_is_the_default_and_may_be_written(project_dir: Path) -> None:
    [target] = load_project(project_dir).integrations[INTEGRATION].targets
    assert target.fallback is None
    set_fallback(project_dir, "park")
    [target] = load_project(project_dir).integrations[INTEGRATION].targets
    assert target.fallback is None


def test_a_file_drop_folder_is_created_relative_to_the_project(project_dir: Path) -> None:
    set_fallback(project_dir, "{after: 1m, file: {dir: drops/erp}}")
    [target] = load_project(project_dir).integrations[INTEGRATION].targets
    assert target.fallback is not None and target.fallback.describe() == "file:drops/erp"
    assert (project_dir / "drops" / "erp").is_dir()


def test_an_unknown_fallback_system_names_file_line_and_fix(project_dir: Path) -> None:
    set_fallback(project_dir, "{to: {system: erp-spare, mapping: order-to-erp@1}}")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION_FILE, 15)
    assert problem.message == "system 'erp-spare' is not defined"
    assert problem.fix == "add a 'kind: System' document named 'erp-spare'"


def test_a_fallback_mapping_must_map_the_entity_to_the_fallback_system(
    project_dir: Path,
) -> None:
    set_fallback(with_backup(project_dir), "{to: {system: erp-backup, mapping: order-to-erp@1}}")
    problem = only(project_dir)
    assert problem.file == INTEGRATION_FILE
    assert "does not map order@1 to system 'erp-backup'" in problem.message
    assert problem.fix is not None and "fallback system" in problem.fix


def test_a_fallback_to_the_target_itself_is_refused(project_dir: Path) -> None:
    set_fallback(project_dir, "{to: {system: erp, mapping: order-to-erp@1}}")
    problem = only(project_dir)
    assert problem.message == "the fallback of target 'erp' is the same system"


def test_a_fallback_needs_exactly_one_way(project_dir: Path) -> None:
    set_fallback(
        with_backup(project_dir),
        "{to: {system: erp-backup, mapping: order-to-erp-backup@1}, file: {dir: drops}}",
    )
    problem = only(project_dir)
    assert problem.file == INTEGRATION_FILE
    assert "not both; keep one" in problem.message
    assert "targets.0.fallback" in problem.message


def test_a_fallback_without_a_way_says_how_to_write_one(project_dir: Path) -> None:
    set_fallback(project_dir, "{after: 10s}")
    problem = only(project_dir)
    assert "needs 'to: {system, mapping}' or 'file: {dir}'" in problem.message
    assert "'fallback: park'" in problem.message


def test_an_unknown_fallback_word_lists_what_is_known(project_dir: Path) -> None:
    set_fallback(project_dir, "retry")
    problem = only(project_dir)
    assert "fallback 'retry' is not known; write 'park'" in problem.message


def test_a_bad_after_is_named(project_dir: Path) -> None:
    set_fallback(project_dir, "{after: soon, file: {dir: drops}}")
    problem = only(project_dir)
    assert "targets.0.fallback.after" in problem.message
    assert "'soon' is not a duration" in problem.message


def test_a_file_drop_folder_that_cannot_be_created_is_a_load_error(project_dir: Path) -> None:
    # A file where the folder would go: nothing can create a folder under it.
    set_fallback(project_dir, "{file: {dir: charter.yaml/drops}}")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION_FILE, 15)
    assert problem.message.startswith("the file drop folder 'charter.yaml/drops' cannot be used: ")
    assert problem.fix is not None and "name another folder" in problem.fix


def test_a_fallback_of_a_target_without_a_breaker_is_refused(project_dir: Path) -> None:
    erp = project_dir / "systems" / "erp.yaml"
    erp.write_text(erp.read_text() + "breaker: {enabled: false}\n")
    set_fallback(project_dir, "{file: {dir: drops}}")
    problem = only(project_dir)
    assert "circuit breaker disabled, so this fallback would never be used" in problem.message
    assert problem.fix == "enable the breaker of system 'erp' or remove the fallback"


# The choice, pure ------------------------------------------------------------------------

FILE = Fallback(after=30.0, file=FileDrop(dir="drops"))


def held(kind: str, until: float = T0 + 100) -> Deferred:
    return Deferred("held back", until=until, kind=kind)


def test_an_open_breaker_leads_to_the_fallback_once_it_has_been_open_for_after() -> None:
    assert park_until(FILE, held("breaker"), opened_at=T0 - 30, now=T0) is None
    # Not yet: wait, but no later than when the fallback becomes due.
    assert park_until(FILE, held("breaker"), opened_at=T0 - 10, now=T0) == T0 + 20
    assert park_until(FILE, held("breaker", until=T0 + 5), opened_at=T0 - 10, now=T0) == T0 + 5


def test_without_a_fallback_or_for_the_quota_the_delivery_waits() -> None:
    assert park_until(None, held("breaker"), opened_at=T0 - 3600, now=T0) == T0 + 100
    assert park_until(FILE, held("quota"), opened_at=T0 - 3600, now=T0) == T0 + 100


# The worker ------------------------------------------------------------------------------


def opened_breaker(shared: LocalState, opened_at: float) -> None:
    """The ERP's breaker open since ``opened_at``, for another open_for from now."""
    shared.records[BreakerKey("erp")] = BreakerRecord(
        state=BreakerState.OPEN,
        since=time.time(),
        opened_at=opened_at,
        last_error="erp answered 503",
    )


def worker_with(
    project: Project, shared: LocalState, store: MemoryStore, **targets: ScriptedTarget
) -> DeliveryWorker:
    # The breaker stays open for the whole test: nothing probes the target.
    erp = project.systems["erp"]
    project.systems["erp"] = erp.model_copy(
        update={"breaker": erp.breaker.model_copy(update={"open_for": 3600.0})}
    )
    resilience = Resilience(project, shared, "worker-1")
    return DeliveryWorker(
        Router(project),
        store,
        {name.replace("_", "-"): t for name, t in targets.items()},
        replace(SETTINGS, grace_seconds=0.3),
        name="worker-1",
        rng=random.Random(3),
        resilience=resilience,
    )


def run_for(worker: DeliveryWorker, until: Callable[[], bool], seconds: float) -> None:
    """Run ``worker`` until ``until()`` holds or ``seconds`` pass, then stop it."""

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.005)
        worker.stop()
        await asyncio.wait_for(task, 5.0)

    asyncio.run(main())


def delivered(store: MemoryStore) -> Callable[[], bool]:
    return lambda: all(d["status"] == "delivered" for d in store.list_deliveries())


def test_an_open_breaker_sends_deliveries_to_the_fallback_system(project_dir: Path) -> None:
    project = load_project(
        set_fallback(
            with_backup(project_dir),
            "{after: 30s, to: {system: erp-backup, mapping: order-to-erp-backup@1}}",
        )
    )
    store, shared = MemoryStore(), LocalState()
    opened_breaker(shared, opened_at=time.time() - 60)
    erp, backup = ScriptedTarget([Reply(201)]), ScriptedTarget([Reply(201)])
    worker = worker_with(project, shared, store, erp=erp, erp_backup=backup)
    [hub_id] = ingest(worker.router, store)
    run_for(worker, delivered(store), 5.0)

    [delivery] = store.list_deliveries()
    assert (delivery["status"], delivery["attempts"], delivery["fallback"]) == (
        "delivered",
        1,
        "erp-backup",
    )
    [attempt] = store.delivery_attempts(delivery["id"])
    assert (attempt["outcome"], attempt["status_code"], attempt["fallback"]) == (
        "delivered",
        201,
        "erp-backup",
    )
    assert erp.calls == []
    [call] = backup.calls
    assert call.idempotency_key == delivery_key(hub_id, INTEGRATION) + ":fallback"
    assert (call.method, call.path) == ("POST", "/orders")
    assert call.headers["x-charter-fallback-for"] == "erp"
    assert orjson.loads(call.body)["external_ref"] == "D-1"
    assert store.delivery_counts().fallback == 1
    assert store.fallback_counts() == {INTEGRATION: 1}
    assert worker.fallen_back == 1


def test_before_after_has_passed_the_delivery_waits_without_an_attempt(
    project_dir: Path,
) -> None:
    project = load_project(
        set_fallback(
            with_backup(project_dir),
            "{after: 1h, to: {system: erp-backup, mapping: order-to-erp-backup@1}}",
        )
    )
    store, shared = MemoryStore(), LocalState()
    opened_breaker(shared, opened_at=time.time() - 1)
    erp, backup = ScriptedTarget([Reply(201)]), ScriptedTarget([Reply(201)])
    worker = worker_with(project, shared, store, erp=erp, erp_backup=backup)
    ingest(worker.router, store)
    run_for(worker, lambda: worker.deferred > 0, 5.0)

    assert worker.deferred == 1
    [delivery] = store.list_deliveries()
    assert (delivery["status"], delivery["attempts"], delivery["fallback"]) == ("pending", 0, None)
    assert (erp.calls, backup.calls) == ([], [])


def test_a_quota_wait_never_falls_back(project_dir: Path) -> None:
    project = load_project(
        set_fallback(
            with_backup(project_dir),
            "{to: {system: erp-backup, mapping: order-to-erp-backup@1}}",
        )
    )
    store, shared = MemoryStore(), LocalState()
    # The breaker is closed; the ERP's budget is paused for an hour (a 429's Retry-After).
    quota = project.systems["erp"].quota
    assert quota is not None
    asyncio.run(shared.pause("erp", QuotaPolicy.of(quota), time.time() + 3600))
    erp, backup = ScriptedTarget([Reply(201)]), ScriptedTarget([Reply(201)])
    worker = worker_with(project, shared, store, erp=erp, erp_backup=backup)
    ingest(worker.router, store)
    run_for(worker, lambda: worker.deferred > 0, 5.0)

    assert worker.deferred == 1
    [delivery] = store.list_deliveries()
    assert (delivery["status"], delivery["attempts"], delivery["fallback"]) == ("pending", 0, None)
    assert (erp.calls, backup.calls) == ([], [])


def test_a_failed_fallback_call_is_an_attempt_retried_by_the_policy(project_dir: Path) -> None:
    project = load_project(
        set_fallback(
            with_backup(project_dir),
            "{to: {system: erp-backup, mapping: order-to-erp-backup@1, "
            "action: {method: PUT, path: /backup-orders}}}",
        )
    )
    store, shared = MemoryStore(), LocalState()
    opened_breaker(shared, opened_at=time.time() - 1)
    unavailable = TargetUnavailable("erp-backup answered 503", status_code=503)
    erp = ScriptedTarget([Reply(201)])
    backup = ScriptedTarget([Reply(error=unavailable), Reply(200)])
    worker = worker_with(project, shared, store, erp=erp, erp_backup=backup)
    ingest(worker.router, store)
    run_for(worker, delivered(store), 5.0)

    [delivery] = store.list_deliveries()
    assert (delivery["status"], delivery["attempts"], delivery["fallback"]) == (
        "delivered",
        2,
        "erp-backup",
    )
    attempts = store.delivery_attempts(delivery["id"])
    assert [(a["outcome"], a["status_code"], a["fallback"], a["error"]) for a in attempts] == [
        ("retry", 503, "erp-backup", "erp-backup answered 503"),
        ("delivered", 200, "erp-backup", None),
    ]
    assert {(c.method, c.path) for c in backup.calls} == {("PUT", "/backup-orders")}
    assert len({c.idempotency_key for c in backup.calls}) == 1
    assert erp.calls == []


def test_a_file_drop_takes_the_mapped_payload_as_a_json_line(project_dir: Path) -> None:
    project = load_project(set_fallback(project_dir, "{file: {dir: dropbox}}"))
    store, shared = MemoryStore(), LocalState()
    opened_breaker(shared, opened_at=time.time() - 1)
    erp = ScriptedTarget([Reply(201)])
    worker = worker_with(project, shared, store, erp=erp)
    hub_ids = ingest(worker.router, store, 1, 2, 3)
    run_for(worker, delivered(store), 5.0)

    deliveries = store.list_deliveries()
    name = drop_file_name("erp", time.time())
    assert {(d["status"], d["fallback"]) for d in deliveries} == {
        ("delivered", f"file:dropbox/{name}")
    }
    lines = [orjson.loads(line) for line in (project_dir / "dropbox" / name).read_bytes().split()]
    assert sorted(line["event_id"] for line in lines) == sorted(hub_ids)
    first = next(line for line in lines if line["event_id"] == hub_ids[0])
    assert first["idempotency_key"] == delivery_key(hub_ids[0], INTEGRATION)
    assert (first["system"], first["method"], first["path"]) == ("erp", "POST", "/orders")
    assert first["payload"]["external_ref"] == "D-1"
    assert erp.calls == []
    assert all(
        a["status_code"] is None for d in deliveries for a in store.delivery_attempts(d["id"])
    )


# The file drop ---------------------------------------------------------------------------


def test_a_line_cut_short_by_a_crash_is_left_alone_and_the_next_starts_anew(
    tmp_path: Path,
) -> None:
    drop = DropFolder(tmp_path / "drops", "drops")
    shown = asyncio.run(drop.append("erp", {"n": 1}))
    path = tmp_path / shown
    with path.open("ab") as file:
        file.write(b'{"n": 2, "payl')  # a crash mid-write
    asyncio.run(drop.append("erp", {"n": 3}))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    readable: list[dict[str, Any]] = []
    for line in lines[:-1]:
        try:
            readable.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            assert line == b'{"n": 2, "payl'
    assert [r["n"] for r in readable] == [1, 3]


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path, ".")

    async def many() -> None:
        await asyncio.gather(*(drop.append("erp", {"n": n, "pad": "x" * 5000}) for n in range(40)))

    asyncio.run(many())
    [path] = list(tmp_path.iterdir())
    numbers = sorted(orjson.loads(line)["n"] for line in path.read_bytes().splitlines())
    assert numbers == list(range(40))


def test_a_file_drop_that_cannot_be_written_is_a_retryable_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    drop = DropFolder(blocker / "drops", "not-a-folder/drops")
    with pytest.raises(TargetUnavailable) as caught:
        asyncio.run(drop.append("erp", {"n": 1}))
    assert caught.value.retryable
    assert caught.value.detail.startswith("the file drop not-a-folder/drops/erp-")
    assert caught.value.fix is not None and "writable" in caught.value.fix
    assert not os.path.exists(blocker / "drops")
