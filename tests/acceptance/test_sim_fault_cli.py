"""``charter sim fault`` and ``charter sim proxy`` in subprocesses, against spawned simulators,
as a user drives them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from charter.sim import SimProcess, free_port, spawn, spawn_proxy
from tests.acceptance.test_cli import assert_no_traceback, charter, one_line_error, table_rows

ORDER = {"external_ref": "D-000001", "total": 10}


@pytest.fixture(scope="module")
def erp_process() -> Iterator[SimProcess]:
    with spawn("erp") as erp:
        yield erp


@pytest.fixture
def erp(erp_process: SimProcess) -> SimProcess:
    erp_process.clear_faults()
    return erp_process


def place(url: str, key: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(
        f"{url}/orders",
        json=ORDER,
        headers={"Idempotency-Key": key},
        timeout=timeout,
        trust_env=False,
    )


def shown(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The faults a successful ``charter sim fault`` printed, as fault -> value texts."""
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done)
    return {row[0]: row[1] for row in table_rows(done.stdout)}


def test_fault_sets_shows_and_clears_a_simulators_faults(erp: SimProcess) -> None:
    faults = shown(charter("sim", "fault", erp.url, "--outage", "--latency-ms", "20"))
    assert (faults["outage"], faults["latency_ms"], faults["error_rate"]) == ("true", "20", "0.0")
    assert place(erp.url, "k1").status_code == 503

    done = charter("sim", "fault", erp.url, "--show", "--json")
    assert done.returncode == 0, done.stderr
    assert (
        orjson.loads(done.stdout)
        == erp.fault()
        == {
            "outage": True,
            "error_rate": 0.0,
            "latency_ms": 20,
            "rate_limit_per_s": None,
            "retry_after_s": 1.0,
            "reset_rate": 0.0,
            "trickle_bytes_per_s": None,
        }
    )

    # --clear first, then the other changes: only these remain.
    faults = shown(charter("sim", "fault", erp.url, "--clear", "--rate-limit", "1"))
    assert (faults["outage"], faults["latency_ms"], faults["rate_limit_per_s"]) == (
        "false",
        "0",
        "1",
    )
    statuses = [place(erp.url, f"k{n}").status_code for n in range(2, 5)]
    assert 429 in statuses
    faults = shown(charter("sim", "fault", erp.url, "--rate-limit", "off"))
    assert faults["rate_limit_per_s"] == "null"
    assert place(erp.url, "k9").status_code == 201


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--error-rate", "1.5"),
            r"refused the fault: 'error_rate' must be a number from 0 to 1, got 1\.5",
        ),
        (
            ("--latency-ms", "soon"),
            r"--latency-ms takes a whole number of milliseconds, got 'soon'",
        ),
        (("--blackhole",), r"unknown field\(s\) blackhole.*for a fault proxy's admin URL"),
        (("--set", "decline_rate"), r"--set takes NAME=VALUE"),
        (("--show", "--outage"), r"--show only shows the faults"),
    ],
)
def test_a_bad_value_is_one_line_naming_it_and_changes_nothing(
    erp: SimProcess, args: tuple[str, ...], expected: str
) -> None:
    erp.fault(latency_ms=7)
    line = one_line_error(charter("sim", "fault", erp.url, *args))
    assert re.search(expected, line), line
    assert erp.fault() == erp.fault(latency_ms=7)  # unchanged


def test_an_unreachable_or_foreign_url_is_one_line() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(charter("sim", "fault", nowhere, "--outage"))
    assert f"cannot reach {nowhere}" in line and "charter sim run" in line
    line = one_line_error(charter("sim", "fault", "ftp://example.invalid"))
    assert "is not a usable URL" in line


def test_the_crm_takes_its_schema_version_from_the_cli() -> None:
    with spawn("crm") as crm:
        faults = shown(charter("sim", "fault", crm.url, "--schema-version", "2"))
        assert faults == {"paused": "false", "schema_version": "2"}
        line = one_line_error(charter("sim", "fault", crm.url, "--schema-version", "3"))
        assert "'schema_version' must be 1 (current deals) or 2" in line
        assert shown(charter("sim", "fault", crm.url, "--clear")) == {"paused": "false"}


@pytest.fixture
def proxy_command(erp: SimProcess) -> Iterator[subprocess.Popen[str]]:
    """``charter sim proxy`` to the ERP, on ports it picks; stopped by its own handle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "charter", "sim", "proxy", "--upstream", erp.url[7:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def test_the_proxy_command_runs_until_sigterm_and_takes_faults_from_the_cli(
    proxy_command: subprocess.Popen[str], erp: SimProcess
) -> None:
    assert proxy_command.stdout is not None
    announced = proxy_command.stdout.readline()
    found = re.search(
        r"proxy on 127\.0\.0\.1:(\d+) -> (\S+); faults at (http://\S+)/faults", announced
    )
    assert found, announced
    url, admin = f"http://127.0.0.1:{found[1]}", found[3]
    assert found[2] == erp.url[7:]
    assert place(url, "p1").status_code == 201

    faults = shown(charter("sim", "fault", admin, "--blackhole", "--latency-ms", "300"))
    assert (faults["blackhole"], faults["latency_ms"]) == ("true", "300")
    with pytest.raises(httpx.TimeoutException):
        place(url, "p2", timeout=0.5)
    assert shown(charter("sim", "fault", admin, "--no-blackhole"))["blackhole"] == "false"
    started = time.perf_counter()
    assert place(url, "p3").status_code == 201
    assert time.perf_counter() - started >= 0.3

    assert shown(charter("sim", "fault", admin, "--reset"))["reset"] == "true"
    with pytest.raises(httpx.TransportError):
        place(url, "p4")
    faults = shown(charter("sim", "fault", admin, "--clear"))
    assert (faults["reset"], faults["latency_ms"]) == ("false", "0")
    assert place(url, "p5").status_code == 201

    proxy_command.send_signal(signal.SIGTERM)
    assert proxy_command.wait(10) == 0
    assert proxy_command.stderr is not None
    assert proxy_command.stderr.read() == ""
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(found[1])), 1):
        pass


def test_the_proxy_command_refuses_bad_addresses_and_taken_ports(erp: SimProcess) -> None:
    line = one_line_error(charter("sim", "proxy", "--upstream", "erp"))
    assert "--upstream must be HOST:PORT, such as 127.0.0.1:8102, got 'erp'" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        line = one_line_error(
            charter("sim", "proxy", "--upstream", erp.url[7:], "--listen", listen)
        )
    assert "cannot listen" in line and "choose other ports" in line


def test_a_spawned_proxy_is_steered_by_its_handle_and_stopped(erp: SimProcess) -> None:
    proxy = spawn_proxy(erp.url)
    try:
        assert proxy.upstream == erp.url[7:]
        assert place(proxy.url, "s1").status_code == 201
        assert proxy.fault(reset=True)["reset"] is True
        with pytest.raises(httpx.TransportError):
            place(proxy.url, "s2")
        assert proxy.clear_faults() == proxy.faults()
        assert place(proxy.url, "s3").status_code == 201
        assert proxy.report()["reset"] >= 1
    finally:
        proxy.stop()
    assert not proxy.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.port), 1):
        pass
