"""``charter sim fault|proxy``: steer a simulator's faults and run a TCP fault proxy.

``charter sim run`` stays in `charter.cli`; this module owns the ``sim`` group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
from rich.table import Table

if TYPE_CHECKING:
    from charter.sim.proxy import FaultProxy
from charter.cli_common import fail as _fail
from charter.cli_common import out

sim_app = typer.Typer(
    help="Simulated business systems and a TCP fault proxy, for demos and tests.",
    no_args_is_help=True,
)

TIMEOUT_S = 5.0
# Faults only a fault proxy takes; a simulator refusing them gets a hint.
PROXY_ONLY = ("reset", "blackhole", "bandwidth_bytes_per_s")
OFF = ("off", "none", "null")


def _number(text: str, option: str, expected: str, *, off: bool) -> Any:
    """A number given on the command line, or None for 'off' where ``off`` allows it.

    Ranges are left to the simulator, which names the field and what it takes.
    """
    if off and text.strip().lower() in OFF:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise _fail(f"{option} takes {expected}, got {text!r}")


def _setting(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise _fail(f"--set takes NAME=VALUE, such as decline_rate=0.2 or hold=true, got {text!r}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return name.strip(), value


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    for suffix in ("/admin/fault", "/faults"):
        url = url.removesuffix(suffix)
    return url


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else (response.text[:200] or "no detail")


def _call(client: httpx.Client, method: str, url: str, body: Any = None) -> dict[str, Any]:
    try:
        response = client.request(method, f"{url}/admin/fault", json=body)
    except httpx.ConnectError as exc:
        raise _fail(
            f"cannot reach {url} ({exc}); start it with 'charter sim run NAME' or "
            "'charter sim proxy', or check the URL"
        ) from exc
    except httpx.TimeoutException as exc:
        raise _fail(f"{url} did not answer within {TIMEOUT_S:g} s; check it is running") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise _fail(f"{url!r} is not a usable URL ({exc}); write http://HOST:PORT") from exc
    except httpx.HTTPError as exc:
        raise _fail(f"talking to {url} failed: {exc!r}") from exc
    if response.status_code in (404, 405):
        raise _fail(
            f"{url} has no /admin/fault: it is not a Charter simulator or fault proxy; "
            "give the URL of 'charter sim run' or the admin URL of 'charter sim proxy'"
        )
    if response.status_code == 422:
        detail = _detail(response)
        hint = ""
        if isinstance(body, dict) and any(name in body for name in PROXY_ONLY):
            hint = "; --reset, --blackhole and --bandwidth are for a fault proxy's admin URL"
        raise _fail(f"{url} refused the fault: {detail}{hint}")
    if not response.is_success:
        raise _fail(f"{url} answered {response.status_code}: {_detail(response)}")
    faults: dict[str, Any] = response.json()
    return faults


def _shown(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else value


@sim_app.command("fault")
def sim_fault(
    url: Annotated[
        str,
        typer.Argument(
            help="A simulator's URL (http://127.0.0.1:8102) or a fault proxy's admin URL."
        ),
    ],
    outage: Annotated[
        bool | None, typer.Option("--outage/--no-outage", help="Answer every request 503.")
    ] = None,
    error_rate: Annotated[
        str | None,
        typer.Option("--error-rate", metavar="F", help="Share of requests answered 500, 0-1."),
    ] = None,
    latency_ms: Annotated[
        str | None,
        typer.Option("--latency-ms", metavar="N", help="Milliseconds added to every answer."),
    ] = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(
            "--rate-limit", metavar="N|off", help="Requests per second before answering 429."
        ),
    ] = None,
    retry_after: Annotated[
        str | None,
        typer.Option("--retry-after", metavar="S", help="Retry-After seconds of those 429s."),
    ] = None,
    trickle: Annotated[
        str | None,
        typer.Option("--trickle", metavar="N|off", help="Send answer bodies at N bytes/s."),
    ] = None,
    reset_rate: Annotated[
        str | None,
        typer.Option(
            "--reset-rate", metavar="F", help="Share of requests whose connection is reset, 0-1."
        ),
    ] = None,
    schema_version: Annotated[
        str | None,
        typer.Option("--schema-version", metavar="N", help="CRM: version of the deals it sends."),
    ] = None,
    paused: Annotated[
        bool | None, typer.Option("--paused/--no-paused", help="CRM: hold its pushes back.")
    ] = None,
    reset: Annotated[
        bool | None,
        typer.Option("--reset/--no-reset", help="Proxy: reset open and new connections."),
    ] = None,
    blackhole: Annotated[
        bool | None,
        typer.Option("--blackhole/--no-blackhole", help="Proxy: accept, but never forward."),
    ] = None,
    bandwidth: Annotated[
        str | None,
        typer.Option("--bandwidth", metavar="N|off", help="Proxy: bytes/s per direction."),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Any other fault, e.g. decline_rate=0.2 (payments), hold=true (warehouse).",
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove every fault first, then apply the others.")
    ] = False,
    show: Annotated[bool, typer.Option("--show", help="Only show the faults.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the faults as JSON.")] = False,
) -> None:
    """Set, clear or show the faults of a simulator or a TCP fault proxy.

    Without changes or --clear it shows them. Prints the faults in effect afterwards.
    """
    flags = {"outage": outage, "paused": paused, "reset": reset, "blackhole": blackhole}
    changes: dict[str, Any] = {name: on for name, on in flags.items() if on is not None}
    numbers = [
        ("error_rate", error_rate, "--error-rate", "a number from 0 to 1", False),
        ("latency_ms", latency_ms, "--latency-ms", "a whole number of milliseconds", False),
        ("rate_limit_per_s", rate_limit, "--rate-limit", "a whole number or 'off'", True),
        ("retry_after_s", retry_after, "--retry-after", "a number of seconds", False),
        ("trickle_bytes_per_s", trickle, "--trickle", "a whole number or 'off'", True),
        ("reset_rate", reset_rate, "--reset-rate", "a number from 0 to 1", False),
        ("schema_version", schema_version, "--schema-version", "1 or 2", False),
        ("bandwidth_bytes_per_s", bandwidth, "--bandwidth", "a whole number or 'off'", True),
    ]
    for name, text, option, expected, off in numbers:
        if text is not None:
            changes[name] = _number(text, option, expected, off=off)
    changes.update(_setting(text) for text in settings or [])
    if show and (changes or clear):
        raise _fail("--show only shows the faults; drop it, or drop the changes and --clear")
    base = _base_url(url)
    with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
        faults = _call(client, "GET", base) if not (clear or changes) else {}
        if clear:
            faults = _call(client, "DELETE", base)
        if changes:
            faults = _call(client, "POST", base, changes)
    if as_json:
        out.print_json(orjson.dumps(faults).decode())
        return
    title = f"Faults of {base}"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("fault")
    table.add_column("value")
    for name, value in faults.items():
        table.add_row(name, _shown(value))
    out.print(table)


@sim_app.command("proxy")
def sim_proxy(
    upstream: Annotated[
        str, typer.Option("--upstream", metavar="HOST:PORT", help="Where to forward to.")
    ],
    listen: Annotated[
        str,
        typer.Option("--listen", metavar="HOST:PORT", help="Where to listen; port 0: any."),
    ] = "127.0.0.1:0",
    admin_port: Annotated[
        str, typer.Option("--admin-port", metavar="PORT", help="Port of the admin API; 0: any.")
    ] = "0",
) -> None:
    """Run a TCP fault proxy (latency, reset, blackhole, bandwidth) until SIGTERM or Ctrl+C.

    Prints where it listens; steer it with 'charter sim fault ADMIN_URL'.
    """
    from charter.sim.proxy import describe, parse_address, run_proxy

    try:
        listen_at = parse_address(listen, "--listen")
        upstream_at = parse_address(upstream, "--upstream")
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if not admin_port.isdigit() or int(admin_port) > 65535:
        raise _fail(f"--admin-port must be a port number from 0 to 65535, got {admin_port!r}")

    def announce(proxy: FaultProxy) -> None:
        print(describe(proxy), flush=True)

    try:
        run_proxy(listen_at, upstream_at, int(admin_port), announce=announce)
    except OSError as exc:
        raise _fail(
            f"cannot listen ({exc.strerror or exc}); choose other ports, or 0 for any free one"
        ) from exc
