"""The ``dumont`` command line.

Exit codes: 0 ok, 1 an operation failed (a guard refused, a host failed, a check found a problem), 2 bad usage
or configuration. Every command that prints data takes ``--json``. Errors go to stderr as one sentence that
names the thing, the value and the fix.
"""

from __future__ import annotations

import logging
import sys

import click

from dumont import __version__
from dumont.cli.chaos_cmd import chaos_command
from dumont.cli.common import run_guarded
from dumont.cli.config_cmd import config_group
from dumont.cli.controller_cmd import INTENT_COMMANDS, events_command, run_command, status_command
from dumont.cli.drill_cmd import drill_command
from dumont.cli.endpoint_cmd import endpoint_group
from dumont.cli.local import local_group
from dumont.cli.offers import offers_command
from dumont.cli.replication import sync_command, verify_command
from dumont.cli.setup_cmd import doctor_command, init_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="dumont")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Dumont Standby: a hot CPU standby for spot GPU workspaces.

    It copies the GPU's /workspace to a cheap CPU VM continuously, moves your SSH endpoint to the CPU when the
    GPU dies, rents a new GPU within your limits, restores the workspace and moves the endpoint back.

    Start with the local cloud (no account needed): `dumont local up`, then `dumont drill`.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(local_group)
cli.add_command(sync_command)
cli.add_command(verify_command)
cli.add_command(config_group)
cli.add_command(run_command)
cli.add_command(drill_command)
cli.add_command(chaos_command)
cli.add_command(status_command)
cli.add_command(events_command)
for _command in INTENT_COMMANDS:
    cli.add_command(_command)
cli.add_command(offers_command)
cli.add_command(init_command)
cli.add_command(doctor_command)
cli.add_command(endpoint_group)


def main() -> None:
    """Console entry point."""
    sys.exit(run_guarded(cli))
