"""The process state machine, one rule at a time: every step kind, retries, compensation,
operator actions, stale results and what a runner re-issues after a crash."""

from __future__ import annotations

import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml

from charter.engine import Definition, ProcessSpec, advance, due_timers, next_wake, outstanding
from charter.engine import start as start_instance
from charter.engine.machine import TERMINAL
from charter.engine.messages import (
    Approved,
    Call,
    Cancel,
    ChildFinished,
    Command,
    Escalate,
    Event,
    EventReceived,
    Finished,
    InvalidOperation,
    Retry,
    RunTask,
    SignalReceived,
    Skip,
    StartChild,
    StepFailed,
    StepSucceeded,
    Terminate,
    TimerFired,
)
from charter.engine.persist import INSTANCE_NAMESPACE, instance_id

HEADER = """\
name: order-to-cash
version: 1
owner: sales-ops
tier: revenue-critical
slo: {objective: 99.5, latency: 1h}
"""


def process(body: str) -> Definition:
    """A definition from the YAML of its steps (and any top-level keys besides the header)."""
    document = yaml.safe_load(HEADER + textwrap.dedent(body))
    return Definition(ProcessSpec.model_validate(document))


class Run:
    """One instance driven event by event, keeping the latest transition at hand."""

    def __init__(
        self,
        definition: Definition,
        input_: Any = None,
        *,
        instance: str = "inst-1",
        key: str = "deal-42",
        now: float = 0.0,
    ) -> None:
        self.definition = definition
        transition = start_instance(definition, instance, key, input_ or {}, now)
        self.state = transition.state
        self.commands: list[Command] = transition.commands
        self.history = transition.history

    def send(self, event: Event) -> list[Command]:
        transition = advance(self.definition, self.state, event)
        self.state = transition.state
        self.commands = transition.commands
        self.history = transition.history
        return self.commands

    @property
    def status(self) -> str:
        return str(self.state["status"])

    def step(self, step: str) -> str:
        entry = self.state["steps"].get(step)
        return str(entry["status"]) if entry else "pending"

    def effects(self) -> list[Call | RunTask]:
        return [c for c in self.commands if isinstance(c, Call | RunTask)]

    def keys(self) -> list[str]:
        return [c.idempotency_key for c in self.effects()]

    def finished(self) -> Finished:
        found = [c for c in self.commands if isinstance(c, Finished)]
        assert len(found) == 1, self.commands
        return found[0]

    def outstanding(self) -> list[Command]:
        return outstanding(self.definition, self.state)


def ok(step: str, output: Any = None, *, attempt: int = 1, now: float = 1.0) -> StepSucceeded:
    return StepSucceeded(step, attempt, output, now)


def undone(step: str, *, attempt: int = 1, now: float = 1.0) -> StepSucceeded:
    return StepSucceeded(step, attempt, None, now, compensation=True)


def failed(
    step: str,
    *,
    attempt: int = 1,
    retryable: bool = False,
    now: float = 1.0,
    retry_after: float | None = None,
    compensation: bool = False,
) -> StepFailed:
    return StepFailed(
        step,
        attempt,
        f"erp answered {503 if retryable else 422}",
        retryable,
        now,
        retry_after=retry_after,
        compensation=compensation,
    )


def stalled(definition: Definition, state: dict[str, Any]) -> bool:
    """Not ended, not held, and nothing that could ever move it on."""
    return (
        state["status"] not in TERMINAL | {"failed"}
        and not outstanding(definition, state)
        and not state["timers"]
        and not state["waits"]
    )


SAGA = process(
    """
    retry: {max_attempts: 3, initial_backoff: 2s, max_backoff: 30s, multiplier: 2}
    steps:
      - id: reserve
        task:
          handler: stock.reserve
          input: {sku: {from: input.sku}}
        compensate:
          task: {handler: stock.release, input: {sku: {from: input.sku}}}
      - id: create_order
        call:
          system: erp
          path: /orders
          body: {sku: {from: input.sku}, ref: {from: instance.key}}
        compensate:
          call: {system: erp, method: DELETE, path: "/orders/{steps.create_order.id}"}
      - id: notify
        call: {system: crm, path: /notes}
      - id: invoice
        call: {system: billing, path: /invoices}
        compensate:
          call: {system: billing, path: "/invoices/{steps.invoice.number}/void"}
    """
)


def saga_at_notify() -> Run:
    """The saga with reserve and create_order done and notify in flight."""
    run = Run(SAGA, {"sku": "A-1"})
    run.send(ok("reserve", {"held": 1}))
    run.send(ok("create_order", {"id": "SO 7/EU"}))
    return run


# call, task, transform ------------------------------------------------------


def test_a_call_step_issues_one_call_with_the_instance_step_key_and_the_mapped_body() -> None:
    definition = process(
        """
        steps:
          - id: create_order
            timeout: 20s
            call:
              system: erp
              method: PUT
              path: "/accounts/{input.account}/orders/{instance.key}"
              body:
                sku: {from: "input.lines[0].sku"}
                qty: {from: "input.lines[0].qty"}
                channel: {const: web}
        """
    )
    run = Run(definition, {"account": "ACME/EU 1", "lines": [{"sku": "A-1", "qty": 2}]})
    assert run.commands == [
        Call(
            step="create_order",
            attempt=1,
            idempotency_key="inst-1:create_order",
            system="erp",
            method="PUT",
            path="/accounts/ACME%2FEU%201/orders/deal-42",
            body={"sku": "A-1", "qty": 2, "channel": "web"},
            timeout=20.0,
        )
    ]
    assert run.status == "running"
    assert run.step("create_order") == "running"


def test_a_call_result_goes_into_the_context_for_the_next_step() -> None:
    definition = process(
        """
        steps:
          - id: create_order
            call: {system: erp, path: /orders}
            output: {id: {from: number}}
          - id: ship
            call: {system: wms, path: "/orders/{steps.create_order.id}/ship"}
        """
    )
    run = Run(definition)
    run.send(ok("create_order", {"number": "SO-1", "noise": True}))
    assert run.state["context"]["steps"]["create_order"] == {"id": "SO-1"}
    [call] = run.effects()
    assert (call.step, call.path, call.idempotency_key) == (
        "ship",
        "/orders/SO-1/ship",
        "inst-1:ship",
    )
    run.send(ok("ship", {"shipped": True}))
    assert run.status == "completed"
    assert run.finished() == Finished(
        "completed", None, {"create_order": {"id": "SO-1"}, "ship": {"shipped": True}}
    )


def test_a_path_placeholder_without_a_value_fails_the_step_for_good() -> None:
    definition = process(
        """
        steps:
          - id: ship
            call: {system: wms, path: "/orders/{input.order}/ship"}
        """
    )
    run = Run(definition, {"order": None})
    assert run.effects() == []
    assert run.step("ship") == "failed"
    assert run.status == "compensated"
    assert "{input.order}" in run.state["reason"]


def test_a_task_step_runs_the_handler_with_the_mapped_input() -> None:
    definition = process(
        """
        steps:
          - id: score
            timeout: 5s
            task:
              handler: risk.score
              input: {amount: {from: input.amount}, currency: {const: EUR}}
        """
    )
    run = Run(definition, {"amount": 120})
    assert run.commands == [
        RunTask(
            step="score",
            attempt=1,
            idempotency_key="inst-1:score",
            handler="risk.score",
            input={"amount": 120, "currency": "EUR"},
            timeout=5.0,
        )
    ]
    run.send(ok("score", {"risk": "low"}))
    assert run.status == "completed"
    assert run.state["context"]["steps"]["score"] == {"risk": "low"}


def test_a_transform_maps_the_context_at_once_without_commands() -> None:
    definition = process(
        """
        steps:
          - id: totals
            transform:
              total: {expr: "input.qty * input.price"}
              currency: {from: input.currency, default: EUR}
        """
    )
    run = Run(definition, {"qty": 3, "price": 2.5})
    assert run.status == "completed"
    assert run.state["context"]["steps"]["totals"] == {"total": 7.5, "currency": "EUR"}
    assert run.effects() == []


def test_a_start_keeps_its_own_copy_of_the_input() -> None:
    definition = process(
        """
        steps:
          - id: pause
            sleep: {for: 1m}
        """
    )
    given = {"order": {"lines": [1, 2]}}
    transition = start_instance(definition, "inst-1", "deal-42", given, 0.0)
    given["order"]["lines"].append(3)
    transition.state["context"]["input"]["order"]["lines"].append(4)
    assert given == {"order": {"lines": [1, 2, 3]}}
    assert transition.state["context"]["input"] == {"order": {"lines": [1, 2, 4]}}


# sleep --------------------------------------------------------------------------


def test_sleep_for_sets_a_durable_timer_and_completes_when_it_fires() -> None:
    definition = process(
        """
        steps:
          - id: cool_off
            sleep: {for: 15m}
          - id: done
            transform: {ok: {const: true}}
        """
    )
    run = Run(definition, now=100.0)
    assert run.state["timers"] == {"sleep:cool_off": 1000.0}
    assert run.status == "waiting"
    assert next_wake(run.state) == 1000.0
    assert due_timers(run.state, 999.0) == []
    [fired] = due_timers(run.state, 1000.0)
    assert fired == TimerFired("sleep:cool_off", 1000.0)
    run.send(fired)
    assert run.state["context"]["steps"]["cool_off"] == {"slept_until": 1000.0}
    assert run.status == "completed"
    assert run.state["timers"] == {}


def test_sleep_until_reads_an_iso_time_from_the_context() -> None:
    definition = process(
        """
        steps:
          - id: wait_for_start
            sleep: {until: input.starts}
        """
    )
    run = Run(definition, {"starts": "2026-12-01T09:00:00Z"})
    assert run.state["timers"] == {"sleep:wait_for_start": 1796115600.0}


def test_sleep_until_a_value_that_is_no_time_fails_the_step() -> None:
    definition = process(
        """
        steps:
          - id: wait_for_start
            sleep: {until: input.starts}
        """
    )
    run = Run(definition, {"starts": "next tuesday"})
    assert run.step("wait_for_start") == "failed"
    assert "next tuesday" in run.state["reason"]
    assert run.state["timers"] == {}


@pytest.fixture
def new_york_time() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_sleep_until_a_time_without_offset_does_not_depend_on_the_host_time_zone() -> None:
    definition = process(
        """
        steps:
          - id: wait_for_start
            sleep: {until: input.starts}
        """
    )
    run = Run(definition, {"starts": "2026-12-01T09:00:00"})
    # Either read as UTC or refused; never the host's local time.
    assert run.step("wait_for_start") == "failed" or run.state["timers"] == {
        "sleep:wait_for_start": 1796115600.0
    }


# wait ---------------------------------------------------------------------------

SHIPPED = """
steps:
  - id: create_order
    call: {system: erp, path: /orders}
    compensate: {call: {system: erp, path: "/orders/{steps.create_order.id}/cancel"}}
  - id: shipped
    wait:
      event: {system: wms, type: order.shipped}
      match: {field: order_id, equals: steps.create_order.id}
      timeout: 2d
{extra}
  - id: invoice
    call: {system: billing, path: /invoices}
"""


def shipped(extra: str = "") -> Definition:
    return process(SHIPPED.replace("{extra}", textwrap.indent(textwrap.dedent(extra), " " * 6)))


def test_a_wait_subscribes_with_the_correlation_value_and_a_timeout() -> None:
    run = Run(shipped())
    run.send(ok("create_order", {"id": "SO-9"}, now=10.0))
    assert run.state["waits"] == {
        "shipped": {
            "kind": "event",
            "system": "wms",
            "type": "order.shipped",
            "field": "order_id",
            "value": "SO-9",
        }
    }
    assert run.state["timers"] == {"timeout:shipped": 10.0 + 2 * 86400}
    assert run.status == "waiting"


def test_the_matching_event_completes_the_wait_and_clears_its_timeout() -> None:
    run = Run(shipped())
    run.send(ok("create_order", {"id": "SO-9"}))
    run.send(EventReceived("shipped", "evt-1", {"order_id": "SO-9", "carrier": "DHL"}, 50.0))
    assert run.state["context"]["steps"]["shipped"] == {"order_id": "SO-9", "carrier": "DHL"}
    assert run.state["timers"] == {}
    assert run.state["waits"] == {}
    assert [c.step for c in run.effects()] == ["invoice"]


def test_an_event_for_a_step_that_does_not_wait_changes_nothing() -> None:
    run = Run(shipped())
    before = run.state
    run.send(EventReceived("shipped", "evt-1", {"order_id": "SO-9"}, 5.0))
    assert run.state == before
    assert run.commands == []
    assert [h["what"] for h in run.history] == ["ignored"]


def test_a_wait_without_the_correlation_value_fails_the_step() -> None:
    run = Run(shipped())
    run.send(ok("create_order", {"number": "SO-9"}))
    assert run.step("shipped") == "failed"
    assert "steps.create_order.id" in run.state["reason"]


def test_a_timeout_without_on_timeout_fails_the_wait_and_compensates() -> None:
    run = Run(shipped())
    run.send(ok("create_order", {"id": "SO-9"}))
    [fired] = due_timers(run.state, 1e9)
    run.send(fired)
    assert run.step("shipped") == "failed"
    assert run.status == "compensating"
    assert run.keys() == ["inst-1:create_order:compensate"]
    assert "no matching event within 172800s" in run.state["reason"]


def test_on_timeout_steps_run_then_the_process_continues() -> None:
    run = Run(
        shipped(
            """
            on_timeout:
              - id: chase
                escalate: {message: "order not shipped in 2 days"}
            after_timeout: continue
            """
        )
    )
    run.send(ok("create_order", {"id": "SO-9"}))
    run.send(TimerFired("timeout:shipped", 200000.0))
    assert Escalate("chase", "sales-ops", "order not shipped in 2 days") in run.commands
    assert run.state["context"]["steps"]["shipped"] == {"timed_out": True}
    assert [c.step for c in run.effects()] == ["invoice"]


def test_on_timeout_steps_continue_by_default() -> None:
    run = Run(shipped("on_timeout: [{id: chase, escalate: {message: late}}]"))
    run.send(ok("create_order", {"id": "SO-9"}))
    run.send(TimerFired("timeout:shipped", 200000.0))
    assert run.step("shipped") == "completed"
    assert [c.step for c in run.effects()] == ["invoice"]


def test_on_timeout_then_fail_fails_after_the_timeout_steps() -> None:
    run = Run(
        shipped(
            """
            on_timeout: [{id: chase, escalate: {message: late}}]
            after_timeout: fail
            """
        )
    )
    run.send(ok("create_order", {"id": "SO-9"}))
    run.send(TimerFired("timeout:shipped", 200000.0))
    assert any(isinstance(c, Escalate) for c in run.commands)
    assert run.step("shipped") == "failed"
    assert run.keys() == ["inst-1:create_order:compensate"]


def test_on_timeout_then_keep_waiting_waits_again_without_a_timer() -> None:
    run = Run(
        shipped(
            """
            on_timeout:
              - id: ask_wms
                call: {system: wms, path: "/orders/{steps.create_order.id}/status"}
            after_timeout: keep_waiting
            """
        )
    )
    run.send(ok("create_order", {"id": "SO-9"}))
    run.send(TimerFired("timeout:shipped", 200000.0))
    assert run.state["waits"] == {}
    assert run.keys() == ["inst-1:ask_wms"]
    run.send(ok("ask_wms", {"state": "picking"}, now=200001.0))
    assert run.step("shipped") == "waiting"
    assert run.state["waits"]["shipped"]["value"] == "SO-9"
    assert run.state["timers"] == {}
    assert run.status == "waiting"
    run.send(EventReceived("shipped", "evt-2", {"order_id": "SO-9"}, 300000.0))
    assert run.step("shipped") == "completed"
    assert [c.step for c in run.effects()] == ["invoice"]


def test_a_wait_on_a_signal_completes_on_that_signal_only() -> None:
    definition = process(
        """
        steps:
          - id: go_live
            wait: {signal: contract-signed}
          - id: provision
            call: {system: portal, path: /tenants}
        """
    )
    run = Run(definition)
    assert run.state["waits"] == {"go_live": {"kind": "signal", "signal": "contract-signed"}}
    before = run.state
    run.send(SignalReceived("contract-cancelled", {}, 5.0))
    assert run.state == before
    assert run.history[-1]["what"] == "ignored"
    run.send(SignalReceived("contract-signed", {"by": "ceo"}, 6.0))
    assert run.state["context"]["steps"]["go_live"] == {"by": "ceo"}
    assert run.keys() == ["inst-1:provision"]


# switch --------------------------------------------------------------------------

ROUTE = process(
    """
    steps:
      - id: route
        switch:
          - when: input.amount > 1000
            steps: [{id: big, transform: {lane: {const: big}}}]
          - when: input.amount > 10
            steps: [{id: medium, transform: {lane: {const: medium}}}]
          - default: true
            steps: [{id: small, call: {system: crm, path: /small}}]
      - id: after
        transform: {lane: {from: steps.route.case}}
    """
)


def test_a_switch_takes_the_first_case_that_holds() -> None:
    run = Run(ROUTE, {"amount": 5000})
    assert run.status == "completed"
    steps = run.state["context"]["steps"]
    assert steps["big"] == {"lane": "big"}
    assert "medium" not in steps
    assert steps["route"] == {"case": 0}
    assert run.step("medium") == "pending"


def test_a_switch_falls_to_the_default_case() -> None:
    run = Run(ROUTE, {"amount": 3})
    assert run.keys() == ["inst-1:small"]
    assert run.step("route") == "running"
    run.send(ok("small"))
    assert run.state["context"]["steps"]["route"] == {"case": 2}
    assert run.status == "completed"


def test_a_switch_without_a_matching_case_goes_on() -> None:
    definition = process(
        """
        steps:
          - id: route
            switch:
              - when: input.vip
                steps: [{id: vip, call: {system: crm, path: /vip}}]
          - id: after
            transform: {done: {const: true}}
        """
    )
    run = Run(definition, {"vip": False})
    assert run.status == "completed"
    assert run.state["context"]["steps"]["route"] == {"case": None}
    assert run.effects() == []


# parallel ------------------------------------------------------------------------


def fan(join: str) -> Definition:
    return process(
        f"""
        steps:
          - id: fan
            parallel:
              join: {join}
              branches:
                - - id: erp_order
                    call: {{system: erp, path: /orders}}
                - - id: crm_deal
                    call: {{system: crm, path: /deals}}
                  - id: crm_note
                    call: {{system: crm, path: /notes}}
                - - id: grace
                    sleep: {{for: 1h}}
                  - id: late_mail
                    call: {{system: mail, path: /send}}
          - id: after
            wait: {{signal: done}}
        """
    )


def test_parallel_branches_start_together_and_join_all_waits_for_every_branch() -> None:
    run = Run(fan("all"))
    assert run.keys() == ["inst-1:erp_order", "inst-1:crm_deal"]
    assert run.state["timers"] == {"sleep:grace": 3600.0}
    run.send(ok("erp_order"))
    run.send(ok("crm_deal"))
    assert run.keys() == ["inst-1:crm_note"]
    run.send(ok("crm_note"))
    assert run.step("fan") == "running"
    run.send(TimerFired("sleep:grace", 3600.0))
    assert run.keys() == ["inst-1:late_mail"]
    run.send(ok("late_mail", now=3601.0))
    assert run.step("fan") == "completed"
    assert run.state["context"]["steps"]["fan"] == {"branches": 3}
    assert run.state["waits"] == {"after": {"kind": "signal", "signal": "done"}}


def test_join_any_completes_with_the_first_branch_and_skips_what_the_others_had_left() -> None:
    run = Run(fan("any"))
    run.send(ok("erp_order"))
    assert run.state["context"]["steps"]["fan"] == {"branch": 0}
    assert run.step("crm_note") == "skipped"
    assert run.step("grace") == "skipped"
    assert run.step("late_mail") == "skipped"
    assert run.state["timers"] == {}
    # The losing call already in flight still reports; its result is kept, nothing follows.
    assert run.step("crm_deal") == "running"
    assert run.state["waits"] == {"after": {"kind": "signal", "signal": "done"}}
    run.send(ok("crm_deal", now=2.0))
    assert run.step("crm_deal") == "completed"
    assert run.effects() == []


def test_a_late_failure_of_a_losing_branch_does_not_fail_the_process() -> None:
    run = Run(fan("any"))
    run.send(ok("erp_order"))
    run.send(failed("crm_deal", now=2.0))
    assert run.status == "waiting"
    assert run.state["waits"] == {"after": {"kind": "signal", "signal": "done"}}
    assert run.effects() == []


# subprocess, task, approve, escalate --------------------------------------------

FULFIL = process(
    """
    steps:
      - id: fulfil
        subprocess:
          process: fulfilment
          version: 2
          key: {from: input.order}
          input: {order: {from: input.order}, rush: {const: true}}
      - id: close
        transform: {tracking: {from: steps.fulfil.tracking}}
    """
)


def test_a_subprocess_starts_a_child_and_waits_for_it() -> None:
    run = Run(FULFIL, {"order": "SO-1"})
    assert run.commands == [
        StartChild("fulfil", "fulfilment", 2, "SO-1", {"order": "SO-1", "rush": True})
    ]
    assert run.state["waits"] == {"fulfil": {"kind": "child"}}
    run.send(ChildFinished("fulfil", "completed", {"tracking": "1Z"}, 9.0))
    assert run.status == "completed"
    assert run.state["context"]["steps"]["close"] == {"tracking": "1Z"}


def test_a_child_that_does_not_complete_fails_the_step() -> None:
    run = Run(FULFIL, {"order": "SO-1"})
    run.send(ChildFinished("fulfil", "compensated", {}, 9.0))
    assert run.step("fulfil") == "failed"
    assert run.state["reason"] == "step fulfil failed: subprocess ended compensated"
    assert run.status == "compensated"


def test_a_subprocess_without_a_key_fails_the_step() -> None:
    run = Run(FULFIL, {})
    assert run.commands == [Finished("compensated", run.state["reason"], {})]
    assert "subprocess key is empty" in run.state["reason"]


APPROVAL = process(
    """
    steps:
      - id: create_order
        call: {system: erp, path: /orders}
        compensate: {call: {system: erp, path: "/orders/{steps.create_order.id}/cancel"}}
      - id: discount_ok
        approve: {prompt: "Discount above 30 %?", timeout: 1d}
      - id: book
        call: {system: erp, path: /bookings}
    """
)


def test_an_approval_waits_for_the_owner_team_and_yes_goes_on_with_who_said_it() -> None:
    run = Run(APPROVAL)
    run.send(ok("create_order", {"id": "SO-3"}, now=5.0))
    assert run.state["waits"] == {"discount_ok": {"kind": "approval", "team": "sales-ops"}}
    assert run.state["timers"] == {"timeout:discount_ok": 5.0 + 86400}
    run.send(Approved("discount_ok", True, "maria", 60.0, comment="fine"))
    assert run.state["context"]["steps"]["discount_ok"] == {
        "approved": True,
        "by": "maria",
        "comment": "fine",
    }
    assert run.keys() == ["inst-1:book"]
    assert run.history[0] == {
        "at": 60.0,
        "what": "approved",
        "step": "discount_ok",
        "by": "maria",
        "comment": "fine",
    }


def test_an_approval_no_fails_the_step_and_compensates() -> None:
    run = Run(APPROVAL)
    run.send(ok("create_order", {"id": "SO-3"}))
    run.send(Approved("discount_ok", False, "maria", 60.0, comment="too much"))
    assert run.step("discount_ok") == "failed"
    assert run.state["reason"] == "step discount_ok failed: rejected by maria: too much"
    assert run.status == "compensating"
    [call] = run.effects()
    assert (call.idempotency_key, call.path) == (
        "inst-1:create_order:compensate",
        "/orders/SO-3/cancel",
    )


def test_an_approval_that_times_out_fails() -> None:
    run = Run(APPROVAL)
    run.send(ok("create_order", {"id": "SO-3"}))
    run.send(TimerFired("timeout:discount_ok", 90000.0))
    assert run.state["reason"] == "step discount_ok failed: no decision before the timeout"


def test_a_decision_for_a_step_that_does_not_wait_for_one_is_refused() -> None:
    run = Run(APPROVAL)
    with pytest.raises(InvalidOperation, match="discount_ok"):
        run.send(Approved("discount_ok", True, "maria", 1.0))


def test_an_approval_for_a_named_team() -> None:
    definition = process(
        """
        steps:
          - id: credit_ok
            approve: {team: finance}
        """
    )
    run = Run(definition)
    assert run.state["waits"] == {"credit_ok": {"kind": "approval", "team": "finance"}}
    assert run.state["timers"] == {}


def test_escalate_tells_the_owner_team_by_default_or_the_team_named() -> None:
    definition = process(
        """
        steps:
          - id: tell_owner
            escalate: {message: "credit limit exceeded"}
          - id: tell_finance
            escalate: {team: finance, message: "please review"}
        """
    )
    run = Run(definition)
    assert run.commands[:2] == [
        Escalate("tell_owner", "sales-ops", "credit limit exceeded"),
        Escalate("tell_finance", "finance", "please review"),
    ]
    assert run.status == "completed"
    assert run.state["context"]["steps"]["tell_owner"] == {"team": "sales-ops"}


# retries -------------------------------------------------------------------------


def test_a_retryable_failure_schedules_a_retry_within_the_backoff_ceiling() -> None:
    run = Run(SAGA, {"sku": "A-1"})
    run.send(failed("reserve", retryable=True, now=100.0))
    assert run.step("reserve") == "retrying"
    assert run.effects() == []
    [(name, at)] = run.state["timers"].items()
    assert name == "retry:reserve"
    assert 100.0 <= at < 100.0 + 2.0  # the first ceiling is initial_backoff
    run.send(TimerFired(name, at))
    assert run.commands == [
        RunTask("reserve", 2, "inst-1:reserve", "stock.reserve", {"sku": "A-1"}, None)
    ]
    run.send(failed("reserve", attempt=2, retryable=True, now=200.0))
    at2 = run.state["timers"]["retry:reserve"]
    assert 200.0 <= at2 < 200.0 + 4.0  # doubled


def test_the_retry_jitter_is_the_same_on_replay_and_differs_between_instances() -> None:
    def retry_at(instance: str) -> float:
        run = Run(SAGA, {"sku": "A-1"}, instance=instance)
        run.send(failed("reserve", retryable=True, now=0.0))
        at: float = run.state["timers"]["retry:reserve"]
        return at

    assert retry_at("inst-1") == retry_at("inst-1")
    assert len({retry_at(f"inst-{n}") for n in range(8)}) == 8


def test_retry_after_is_honoured_as_a_minimum() -> None:
    def retry_at(retry_after: float | None) -> float:
        run = Run(SAGA, {"sku": "A-1"})
        run.send(failed("reserve", retryable=True, now=100.0, retry_after=retry_after))
        at: float = run.state["timers"]["retry:reserve"]
        return at

    assert retry_at(45.0) == 145.0
    # A shorter Retry-After than the backoff does not bring the retry forward.
    assert retry_at(0.0) == retry_at(None) > 100.0


def test_the_last_attempt_dead_ends_into_process_failure() -> None:
    run = Run(SAGA, {"sku": "A-1"})
    for attempt in (1, 2):
        run.send(failed("reserve", attempt=attempt, retryable=True, now=10.0 * attempt))
        run.send(TimerFired("retry:reserve", 10.0 * attempt + 5))
    run.send(failed("reserve", attempt=3, retryable=True, now=40.0))
    assert run.step("reserve") == "failed"
    assert run.state["timers"] == {}
    assert run.status == "compensated"
    assert run.state["reason"] == "step reserve failed: erp answered 503"


def test_a_non_retryable_failure_fails_at_once() -> None:
    run = Run(SAGA, {"sku": "A-1"})
    run.send(failed("reserve"))
    assert run.step("reserve") == "failed"
    assert run.state["timers"] == {}
    assert run.finished() == Finished("compensated", "step reserve failed: erp answered 422", {})


# compensation --------------------------------------------------------------------


def test_a_failure_compensates_completed_steps_in_reverse_order_of_completion() -> None:
    run = saga_at_notify()
    run.send(failed("notify", now=3.0))
    assert run.status == "compensating"
    assert run.state["reason"] == "step notify failed: erp answered 422"
    [undo_order] = run.effects()
    assert undo_order == Call(
        step="create_order",
        attempt=1,
        idempotency_key="inst-1:create_order:compensate",
        system="erp",
        method="DELETE",
        path="/orders/SO%207%2FEU",
        body=None,
        timeout=None,
        compensation=True,
    )
    run.send(undone("create_order", now=4.0))
    assert run.step("create_order") == "compensated"
    assert run.commands == [
        RunTask(
            step="reserve",
            attempt=1,
            idempotency_key="inst-1:reserve:compensate",
            handler="stock.release",
            input={"sku": "A-1"},
            timeout=None,
            compensation=True,
        )
    ]
    run.send(undone("reserve", now=5.0))
    assert run.status == "compensated"
    assert run.finished().reason == "step notify failed: erp answered 422"
    assert run.step("notify") == "failed"
    assert run.step("invoice") == "pending"


def test_compensation_follows_completion_order_not_declaration_order() -> None:
    definition = process(
        """
        steps:
          - id: fan
            parallel:
              branches:
                - - id: left
                    call: {system: erp, path: /l}
                    compensate: {call: {system: erp, path: /l/undo}}
                - - id: right
                    call: {system: crm, path: /r}
                    compensate: {call: {system: crm, path: /r/undo}}
          - id: boom
            call: {system: erp, path: /boom}
        """
    )
    run = Run(definition)
    run.send(ok("right"))
    run.send(ok("left"))
    run.send(failed("boom"))
    assert run.keys() == ["inst-1:left:compensate"]
    run.send(undone("left"))
    assert run.keys() == ["inst-1:right:compensate"]
    run.send(undone("right"))
    assert run.status == "compensated"


def test_a_failed_compensation_holds_the_instance_and_retry_runs_it_again() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    run.send(failed("create_order", compensation=True, now=4.0))
    assert run.status == "failed"
    assert run.state["reason"] == "compensation of step create_order failed: erp answered 422"
    assert run.outstanding() == []
    run.send(Retry("ops", 100.0))
    assert run.status == "compensating"
    assert run.keys() == ["inst-1:create_order:compensate"]
    # Attempt numbers keep rising across a retry, so the old attempt's result is stale.
    run.send(undone("create_order", attempt=1, now=100.5))
    assert run.status == "compensating"
    run.send(undone("create_order", attempt=2, now=101.0))
    run.send(undone("reserve", now=102.0))
    assert run.status == "compensated"


def test_a_compensation_retried_to_success_ends_with_the_original_reason() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    run.send(failed("create_order", compensation=True, now=4.0))
    run.send(Retry("ops", 100.0))
    run.send(undone("create_order", attempt=2, now=101.0))
    run.send(undone("reserve", now=102.0))
    assert run.finished().reason == "step notify failed: erp answered 422"


def test_a_retryable_compensation_failure_is_retried_on_a_timer() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    run.send(failed("create_order", compensation=True, retryable=True, now=10.0))
    assert run.status == "compensating"
    [(name, at)] = run.state["timers"].items()
    assert name == "undo:create_order"
    assert 10.0 <= at < 12.0
    assert run.outstanding() == []
    run.send(TimerFired(name, at))
    [again] = run.effects()
    assert (again.idempotency_key, again.attempt, again.compensation) == (
        "inst-1:create_order:compensate",
        2,
        True,
    )


HOLD = process(
    """
    on_failure: hold
    steps:
      - id: create_order
        call: {system: erp, path: /orders}
        compensate: {call: {system: erp, path: /orders/undo}}
      - id: invoice
        call: {system: billing, path: /invoices}
      - id: notify
        call: {system: crm, path: /notes}
    """
)


def test_on_failure_hold_leaves_the_instance_failed_and_retry_runs_the_step_again() -> None:
    run = Run(HOLD)
    run.send(ok("create_order"))
    run.send(failed("invoice", now=2.0))
    assert run.status == "failed"
    assert run.state["reason"] == "step invoice failed: erp answered 422"
    assert run.effects() == []
    run.send(Retry("ops", 10.0))
    assert run.status == "running"
    assert run.state["reason"] is None
    [call] = run.effects()
    assert (call.step, call.idempotency_key) == ("invoice", "inst-1:invoice")
    run.send(ok("invoice", attempt=call.attempt, now=11.0))
    assert run.keys() == ["inst-1:notify"]


def test_skipping_the_failed_step_of_a_held_instance_goes_on() -> None:
    run = Run(HOLD)
    run.send(ok("create_order"))
    run.send(failed("invoice"))
    run.send(Skip("invoice", "ops", 10.0))
    assert run.step("invoice") == "skipped"
    assert run.state["context"]["steps"]["invoice"] is None
    assert run.keys() == ["inst-1:notify"]
    run.send(ok("notify"))
    assert run.status == "completed"


def test_skipping_a_retrying_step_goes_on() -> None:
    run = Run(HOLD)
    run.send(failed("create_order", retryable=True))
    run.send(Skip("create_order", "ops", 2.0))
    assert run.state["timers"] == {}
    assert run.keys() == ["inst-1:invoice"]


def test_after_retry_a_duplicate_of_the_old_failure_is_stale() -> None:
    run = Run(HOLD)
    run.send(ok("create_order"))
    old = failed("invoice", now=2.0)
    run.send(old)
    run.send(Retry("ops", 10.0))
    run.send(old)  # delivered again, at least once
    assert run.status == "running"
    assert [c.step for c in run.outstanding()] == ["invoice"]


def test_cancel_compensates_and_ends_cancelled() -> None:
    run = saga_at_notify()
    run.send(ok("notify"))
    run.send(Cancel("maria", "customer withdrew", 5.0))
    assert run.state["reason"] == "cancelled by maria: customer withdrew"
    # invoice was in flight: compensation waits for it.
    assert run.status == "compensating"
    assert run.effects() == []
    run.send(ok("invoice", {"number": "INV-1"}, now=6.0))
    assert run.keys() == ["inst-1:invoice:compensate"]
    run.send(undone("invoice"))
    assert run.keys() == ["inst-1:create_order:compensate"]
    run.send(undone("create_order"))
    assert run.keys() == ["inst-1:reserve:compensate"]
    run.send(undone("reserve"))
    assert run.finished() == Finished(
        "cancelled",
        "cancelled by maria: customer withdrew",
        run.state["context"]["steps"],
    )


def test_cancel_while_a_call_fails_in_flight_compensates_only_what_completed() -> None:
    run = saga_at_notify()
    run.send(Cancel("maria", "", 5.0))
    assert run.state["reason"] == "cancelled by maria"
    assert [c.step for c in run.outstanding()] == ["notify"]
    run.send(failed("notify", retryable=True, now=6.0))
    assert run.step("notify") == "failed"
    assert run.state["timers"] == {}
    assert run.keys() == ["inst-1:create_order:compensate"]


def test_cancel_of_a_waiting_instance_drops_its_waits_and_timers() -> None:
    run = Run(APPROVAL)
    run.send(ok("create_order", {"id": "SO-3"}))
    run.send(Cancel("maria", "", 5.0))
    assert run.state["waits"] == {}
    assert run.state["timers"] == {}
    assert run.step("discount_ok") == "skipped"
    assert run.keys() == ["inst-1:create_order:compensate"]


def test_terminate_ends_at_once_without_compensation() -> None:
    run = saga_at_notify()
    run.send(Terminate("ops", "wrong customer", 5.0))
    assert run.status == "terminated"
    assert run.finished() == Finished(
        "terminated", "terminated by ops: wrong customer", run.state["context"]["steps"]
    )
    assert run.effects() == []
    assert run.step("create_order") == "completed"


def test_a_terminated_instance_has_nothing_outstanding() -> None:
    run = saga_at_notify()
    run.send(Terminate("ops", "", 5.0))
    assert run.outstanding() == []


def test_terminate_during_compensation_stops_it() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    assert run.keys() == ["inst-1:create_order:compensate"]
    run.send(Terminate("ops", "stop", 5.0))
    run.send(undone("create_order", now=6.0))
    assert run.effects() == []
    assert run.status == "terminated"


def test_skip_after_a_failed_compensation_does_not_stall_the_instance() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    run.send(failed("create_order", compensation=True))
    assert run.status == "failed"
    try:
        run.send(Skip("notify", "ops", 10.0))
    except InvalidOperation:
        return
    assert not stalled(SAGA, run.state)
    assert not [c for c in run.effects() if not c.compensation]


def test_cancel_after_a_failed_compensation_does_not_claim_it_undid_everything() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    run.send(failed("create_order", compensation=True))
    try:
        run.send(Cancel("ops", "give up", 10.0))
    except InvalidOperation:
        return
    assert "inst-1:create_order:compensate" in [c.idempotency_key for c in run.outstanding()]


def test_a_succeeded_call_whose_output_does_not_map_is_still_compensated() -> None:
    definition = process(
        """
        steps:
          - id: create_order
            call: {system: erp, path: /orders}
            output: {id: {from: id, required: true}}
            compensate: {call: {system: erp, path: /orders/by-ref/deal-42/cancel}}
        """
    )
    run = Run(definition)
    run.send(ok("create_order", {"number": "SO-1"}))
    assert run.keys() == ["inst-1:create_order:compensate"]


# operations that do not apply ----------------------------------------------------


def completed_saga() -> Run:
    run = saga_at_notify()
    run.send(ok("notify"))
    run.send(ok("invoice", {"number": "INV-1"}))
    assert run.status == "completed"
    return run


@pytest.mark.parametrize(
    ("setup", "operation", "message"),
    [
        (completed_saga, Cancel("ops", "", 9.0), "already ended"),
        (completed_saga, Terminate("ops", "", 9.0), "already ended"),
        (completed_saga, Retry("ops", 9.0), "only a failed instance"),
        (saga_at_notify, Retry("ops", 9.0), "this one is running"),
        (saga_at_notify, Skip("invoice", "ops", 9.0), "invoice' is pending"),
        (saga_at_notify, Skip("notify", "ops", 9.0), "notify' is running"),
        (saga_at_notify, Skip("nope", "ops", 9.0), "no step 'nope'"),
    ],
)
def test_operations_that_do_not_apply_are_refused(
    setup: Any, operation: Event, message: str
) -> None:
    run = setup()
    before = run.state
    with pytest.raises(InvalidOperation, match=message):
        run.send(operation)
    assert run.state == before


def test_cancel_during_compensation_is_refused() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    with pytest.raises(InvalidOperation, match="already compensating"):
        run.send(Cancel("ops", "", 9.0))


def test_a_terminated_instance_cannot_be_terminated_again() -> None:
    run = saga_at_notify()
    run.send(Terminate("ops", "", 5.0))
    with pytest.raises(InvalidOperation, match=r"already ended \(terminated\)"):
        run.send(Terminate("ops", "", 6.0))


# stale and duplicate results -----------------------------------------------------


def test_a_result_of_an_earlier_attempt_changes_nothing_but_history() -> None:
    run = Run(SAGA, {"sku": "A-1"})
    run.send(failed("reserve", retryable=True))
    run.send(TimerFired("retry:reserve", 10.0))
    before = run.state
    for late in (ok("reserve", attempt=1, now=11.0), failed("reserve", attempt=1, now=11.0)):
        run.send(late)
        assert run.state == before
        assert run.commands == []
        assert [h["what"] for h in run.history] == ["ignored"]


def test_a_duplicate_result_of_a_completed_step_changes_nothing_but_history() -> None:
    run = saga_at_notify()
    before = run.state
    run.send(ok("create_order", {"id": "other"}, now=9.0))
    assert run.state == before
    assert run.commands == []
    assert run.history == [
        {
            "at": 9.0,
            "what": "ignored",
            "step": "create_order",
            "reason": "stale result of attempt 1",
        }
    ]


def test_stale_compensation_results_change_nothing_but_history() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    before = run.state
    for stale in (
        undone("create_order", attempt=2),
        undone("reserve"),
        failed("reserve", compensation=True),
    ):
        run.send(stale)
        assert run.state == before
        assert run.commands == []


def test_a_timer_that_is_not_set_changes_nothing() -> None:
    run = saga_at_notify()
    before = run.state
    run.send(TimerFired("retry:notify", 50.0))
    assert run.state == before
    assert run.history[-1]["what"] == "ignored"


# what a runner re-issues after a crash -------------------------------------------


def test_outstanding_is_exactly_the_calls_in_flight_with_the_same_keys() -> None:
    run = Run(fan("all"))
    issued = run.effects()
    assert run.outstanding() == issued
    run.send(ok("erp_order"))
    assert run.outstanding() == issued[1:]


def test_outstanding_repeats_the_current_attempt_not_a_new_one() -> None:
    run = Run(SAGA, {"sku": "A-1"})
    run.send(failed("reserve", retryable=True))
    assert run.outstanding() == []  # a retry timer, not a call in flight
    run.send(TimerFired("retry:reserve", 10.0))
    issued = run.effects()
    assert run.outstanding() == issued
    assert run.outstanding() == issued  # asking does not change the state


def test_what_a_handler_does_with_a_reissued_input_does_not_reach_the_state() -> None:
    definition = process(
        """
        steps:
          - id: pack
            task: {handler: pack, input: {order: {from: input.order}}}
          - id: ship
            call: {system: wms, path: /shipments, body: {order: {from: input.order}}}
        """
    )
    run = Run(definition, {"order": {"lines": ["A-1"]}})
    before = orjson.loads(orjson.dumps(run.state))
    (task,) = run.outstanding()
    assert isinstance(task, RunTask)
    task.input["order"]["lines"].append("B-2")
    assert run.state == before
    run.send(ok("pack"))
    before = orjson.loads(orjson.dumps(run.state))
    (call,) = run.outstanding()
    assert isinstance(call, Call) and call.body == {"order": {"lines": ["A-1"]}}
    call.body["order"]["lines"].clear()
    assert run.state == before


def test_outstanding_includes_a_compensation_in_flight_but_not_one_waiting_to_retry() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    assert run.outstanding() == run.effects()
    run.send(failed("create_order", compensation=True, retryable=True, now=2.0))
    assert run.outstanding() == []


def test_the_state_is_plain_json() -> None:
    run = saga_at_notify()
    run.send(failed("notify"))
    assert orjson.loads(orjson.dumps(run.state)) == run.state


@pytest.mark.parametrize("key", ["deal-42", "", "ü-ñ", "x" * 300])
def test_an_instance_id_is_the_uuid5_of_process_and_business_key(key: str) -> None:
    # Stored ids must not change from one release to the next: a retried start finds its id.
    expected = uuid.uuid5(INSTANCE_NAMESPACE, f"order-to-cash\x00{key}")
    assert instance_id("order-to-cash", key) == str(expected)
    assert instance_id("order-to-cash", key) == instance_id("order-to-cash", key)
    assert instance_id("order-to-cash", key) != instance_id("order-to-cas", f"h\x00{key}")
