"""What every command shares: error handling and exit codes, JSON or human output."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from dumont.errors import DumontError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

T = TypeVar("T")

LINK_PROFILES = ("lan", "wan", "bad")  # localcloud/link.py PROFILES, named here so the CLI starts fast


def run_guarded(command: click.Command) -> int:
    """Run the click command and turn our errors into one stderr line and the right exit code."""
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; everything this command started was stopped", err=True)
        return 130
    except DumontError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    return EXIT_OK


def run_until_done(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` with SIGTERM taken as Ctrl-C is: the work is cancelled, so whatever it started (hosts,
    emulators, a controller process) is stopped by its own clean-up before the command exits 130."""

    async def guarded() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


def emit(data: Any, *, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print ``data`` as one JSON document, or as the human text ``human(data)``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(human(data))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
