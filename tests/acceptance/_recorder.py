"""A target system that records when each request arrives, for the resilience acceptance tests.

The simulators count requests; this one also keeps the arrival time, the
Idempotency-Key, the calling integration and the answer of every business
request, so a test can measure rates and pauses as the target saw them.
Business requests (``POST`` on any path) apply once per Idempotency-Key.
Faults, through ``POST /admin/fault`` (merged) and ``DELETE /admin/fault``:

- ``rate_limit_per_s`` + ``retry_after_s``: past that many requests in the
  current one-second window, ``429`` with ``Retry-After``;
- ``status``: answer every request with that status (e.g. 503);

``GET /admin/log`` lists ``[time, key, integration, status]`` per request and
``GET /admin/report`` counts applied keys and duplicates. Run it with
``python -m tests.acceptance._recorder --port N``; `spawn_recorder` does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from charter.sim import free_port


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[float, str, str, int]] = []
        self.applied: dict[str, int] = {}
        self.duplicates = 0
        self.faults: dict[str, Any] = {}
        self._window = (0, 0)

    async def business(self, request: Request) -> Response:
        now = time.time()
        await request.body()
        key = request.headers.get("idempotency-key", "")
        flow = request.headers.get("x-charter-integration", "")
        status, headers = self._fault(now)
        if status == 201:
            if key in self.applied:
                self.duplicates += 1
            else:
                self.applied[key] = 1
        self.log.append((now, key, flow, status))
        return JSONResponse({"id": key}, status_code=status, headers=headers)

    def _fault(self, now: float) -> tuple[int, dict[str, str]]:
        if self.faults.get("status"):
            return int(self.faults["status"]), {}
        limit = self.faults.get("rate_limit_per_s")
        if limit is not None:
            second, count = self._window
            if int(now) != second:
                second, count = int(now), 0
            self._window = (second, count + 1)
            if count + 1 > limit:
                return 429, {"Retry-After": f"{self.faults.get('retry_after_s', 1.0):g}"}
        return 201, {}

    async def set_fault(self, request: Request) -> Response:
        self.faults.update(await request.json())
        return JSONResponse(self.faults)

    async def clear_fault(self, request: Request) -> Response:
        self.faults = {}
        return JSONResponse(self.faults)

    async def get_log(self, request: Request) -> Response:
        return JSONResponse(self.log)

    async def report(self, request: Request) -> Response:
        return JSONResponse(
            {
                "received": len(self.log),
                "applied": len(self.applied),
                "duplicates": self.duplicates,
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/admin/log", self.get_log, methods=["GET"]),
                Route("/admin/report", self.report, methods=["GET"]),
                Route("/admin/fault", self.set_fault, methods=["POST"]),
                Route("/admin/fault", self.clear_fault, methods=["DELETE"]),
                Route("/{path:path}", self.business, methods=["POST", "PUT", "PATCH"]),
            ]
        )


class RecorderProcess:
    """The recorder in a child process; stopped by its own handle."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.acceptance._recorder", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, trust_env=False, timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.get("/admin/report").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the recorder did not start") from None
                time.sleep(0.05)

    def fault(self, **faults: Any) -> None:
        self.client.post("/admin/fault", json=faults).raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete("/admin/fault").raise_for_status()

    def requests(self) -> list[tuple[float, str, str, int]]:
        """Every business request so far: (arrival time, key, integration, status)."""
        return [tuple(row) for row in self.client.get("/admin/log").json()]  # type: ignore[misc]

    def report(self) -> dict[str, int]:
        body: dict[str, int] = self.client.get("/admin/report").json()
        return body

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self.client.close()
        self._log.close()

    def __enter__(self) -> RecorderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        Recorder().app(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
