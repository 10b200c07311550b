"""What every ``charter`` command group shares: consoles, the project and database options,
the one-line failure, who is acting, and a hub opened for one command."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from charter.errors import CharterError

if TYPE_CHECKING:
    from charter.runtime import Hub

out = Console()
err = Console(stderr=True)

ProjectOption = Annotated[
    Path, typer.Option("--project", "-p", envvar="CHARTER_PROJECT", help="The project folder.")
]
DatabaseOption = Annotated[
    str | None, typer.Option("--database", envvar="CHARTER_DATABASE_URL", help="Database URL.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one error line; raise what this returns."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def default_by() -> str:
    """Who acts, when a command is not told: the user running it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@contextmanager
def hub_session(project: Path, database: str | None) -> Iterator[Hub]:
    """The hub of ``project`` for one command; a Charter error becomes a one-line failure."""
    from charter.cli import _open_hub

    hub = _open_hub(project, database)
    try:
        yield hub
    except CharterError as exc:
        raise fail(str(exc)) from exc
    finally:
        hub.close()
