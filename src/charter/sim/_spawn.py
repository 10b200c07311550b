"""Run a simulator or a TCP fault proxy in a child process, for tests, demos and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import httpx

from charter.sim._run import SIM_NAMES

HOST = "127.0.0.1"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class _Child:
    """A child process serving HTTP admin endpoints on ``admin_url``, with its output kept
    in a temporary file."""

    kind = "child"

    def __init__(
        self, name: str, admin_url: str, process: subprocess.Popen[bytes], log: IO[bytes]
    ) -> None:
        self.name = name
        self._process = process
        self._log = log
        # Never through a proxy from the environment: the child is on this host.
        self._client = httpx.Client(base_url=admin_url, timeout=5.0, trust_env=False)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self._process.poll() is None

    def report(self) -> dict[str, Any]:
        """The child's ``GET /admin/report`` counters."""
        return self._call("GET", "/admin/report")

    def fault(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the injected faults and return them all."""
        return self._call("POST", "/admin/fault", json=changes)

    def clear_faults(self) -> dict[str, Any]:
        """Remove every injected fault."""
        return self._call("DELETE", "/admin/fault")

    def log_tail(self, max_lines: int = 20) -> str:
        """The last lines the child wrote to stdout or stderr."""
        if self._log.closed:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - 8192))
        text = self._log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-max_lines:])

    def stop(self) -> None:
        """Ask the child to stop (SIGTERM), kill it after 5 s, and release its log and client."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._client.close()
        self._log.close()

    def _kill(self) -> None:
        self._process.kill()
        self._process.wait()
        self._client.close()
        self._log.close()

    def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        response = self._client.request(method, path, json=json)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (code := self._process.poll()) is not None:
                raise RuntimeError(
                    f"{self.kind} {self.name!r} exited with code {code} before answering on "
                    f"{self._client.base_url}; its output ends with:\n{self.log_tail()}"
                )
            try:
                self._client.get("/admin/report", timeout=1.0).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(
            f"{self.kind} {self.name!r} did not answer on {self._client.base_url} within "
            f"{timeout_s:g} s; its output ends with:\n{self.log_tail()}"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SimProcess(_Child):
    """A simulator serving on ``url`` from a child process.

    Use it as a context manager or call `stop`: the child is not stopped for
    you when the handle is dropped.
    """

    kind = "simulator"

    def __init__(self, name: str, port: int, process: subprocess.Popen[bytes], log: IO[bytes]):
        self.port = port
        self.url = f"http://{HOST}:{port}"
        super().__init__(name, self.url, process, log)

    def __repr__(self) -> str:
        return f"<SimProcess {self.name} pid={self.pid} {self.url}>"


class ProxyProcess(_Child):
    """A TCP fault proxy (`charter.sim.proxy`) forwarding ``port`` to ``upstream`` from a
    child process; its faults are at ``admin_url`` (``/faults``, ``/admin/fault``).

    ``url`` is ``http://`` plus the listening address, for proxying an HTTP
    server. Use it as a context manager or call `stop`.
    """

    kind = "proxy"

    def __init__(
        self,
        port: int,
        admin_port: int,
        upstream: str,
        process: subprocess.Popen[bytes],
        log: IO[bytes],
    ) -> None:
        self.port = port
        self.admin_port = admin_port
        self.upstream = upstream
        self.url = f"http://{HOST}:{port}"
        self.admin_url = f"http://{HOST}:{admin_port}"
        super().__init__(f"to {upstream}", self.admin_url, process, log)

    def faults(self) -> dict[str, Any]:
        """The faults in effect."""
        return self._call("GET", "/faults")

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} {self.url} -> {self.upstream}>"


def spawn(
    name: str, *, port: int | None = None, hub_url: str | None = None, seed: int = 7
) -> SimProcess:
    """Start simulator ``name`` in a child process and return once it answers.

    Picks a free port when none is given. Raises ValueError for an unknown
    name, and RuntimeError with the end of the child's output when it does not
    answer ``GET /admin/report`` within 15 s (the child is killed first).
    """
    if name not in SIM_NAMES:
        raise ValueError(f"unknown simulator {name!r}; choose one of {', '.join(SIM_NAMES)}")
    port = port or free_port()
    command = [sys.executable, "-m", "charter.sim", name, "--host", HOST, "--port", str(port)]
    command += ["--seed", str(seed)]
    if hub_url is not None:
        command += ["--hub", hub_url]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return _ready(SimProcess(name, port, process, log))


def spawn_proxy(
    upstream: str, *, port: int | None = None, admin_port: int | None = None
) -> ProxyProcess:
    """Start a TCP fault proxy to ``upstream`` (``HOST:PORT``, or an ``http://`` URL such as
    a `SimProcess`'s) in a child process and return once its admin endpoint answers.

    Picks free ports when none are given. Raises ValueError for a malformed
    ``upstream``, and RuntimeError as `spawn` does.
    """
    address = upstream.removeprefix("http://").rstrip("/")
    host, sep, upstream_port = address.rpartition(":")
    if not sep or not host or not upstream_port.isdigit():
        raise ValueError(f"upstream must be HOST:PORT or http://HOST:PORT, got {upstream!r}")
    port = port or free_port()
    admin_port = admin_port or free_port()
    command = [sys.executable, "-m", "charter.sim.proxy", "--listen", f"{HOST}:{port}"]
    command += ["--upstream", address, "--admin-port", str(admin_port)]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return _ready(ProxyProcess(port, admin_port, address, process, log))


C = TypeVar("C", bound=_Child)


def _ready(child: C) -> C:
    try:
        child._wait_until_ready(READY_TIMEOUT_S)
    except BaseException:
        child._kill()
        raise
    return child
