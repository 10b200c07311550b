"""Start Charter processes as children and wait until they serve (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from charter.sim import free_port

READY_TIMEOUT_S = 30.0


class HubProcess:
    """``charter up`` (or ``server`` / ``worker``) in a child process.

    Only this handle's own child is ever signalled, by its pid.
    """

    def __init__(
        self,
        project: Path,
        *,
        command: str = "up",
        port: int | None = None,
        env: dict[str, str] | None = None,
        database: str | None = None,
    ) -> None:
        self.project = project
        self.command = command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        if database:
            self.env["CHARTER_DATABASE_URL"] = database
        self._log = tempfile.TemporaryFile()
        self._process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, wait: bool = True) -> HubProcess:
        args = [sys.executable, "-m", "charter", self.command, "--project", str(self.project)]
        if self.command != "worker":
            args += ["--port", str(self.port)]
        self._process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        if wait and self.command != "worker":
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"charter {self.command} exited early:\n{self.log_tail()}")
            try:
                if self.client.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"charter {self.command} did not answer in {timeout}s:\n{self.log_tail()}"
        )

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/v1/stats")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def log_tail(self, lines: int = 30) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode("utf-8", "replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all, as a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def close(self) -> None:
        self.stop()
        self.client.close()
        self._log.close()

    def __enter__(self) -> HubProcess:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
