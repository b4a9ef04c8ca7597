"""``dumont drill``: run the failure-and-recovery story for real on the local cloud and write a report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from dumont.cli.common import LINK_PROFILES, json_option, run_until_done
from dumont.drill.profiles import PROFILES, SCENARIOS
from dumont.errors import DumontError


@click.command("drill")
@click.option("--size", default="32M", show_default=True, help="Workspace size; 1.2G builds the seed's workspace.")
@click.option("--files", type=click.IntRange(min=0), default=50, show_default=True, help="Extra small source files.")
@click.option("--passes", type=click.IntRange(min=1, max=100), default=5, show_default=True,
              help="Passes of normal operation (the writer running) before the failure.")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="fast", show_default=True,
              help="fast: 1 s checks, 3 strikes, 2 s syncs; seed: the seed's 10 s / 3 / 30 s.")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="gpu-kill", show_default=True,
              help="The failure to inject.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the report goes (default: reports/drill-<time>).")
@click.option("--keep-cloud", is_flag=True, help="Keep the drill's local cloud directory for inspection.")
@click.option("--link", type=click.Choice(LINK_PROFILES), default=None,
              help="Put every host behind a link: wan is 180 ms, 200 Mbit/s; bad is 300 ms, 20 Mbit/s, 2 s stalls.")
@click.option("--corrupt-standby", default=None, hidden=True, help="Test hook: damage this file on the standby.")
@json_option
def drill_command(size: str, files: int, passes: int, profile: str, scenario: str, out: Path | None, keep_cloud: bool,
                  link: str | None, corrupt_standby: str | None, as_json: bool) -> None:
    """Run the seven phases (setup, normal operation, failure, detection, failover, recovery, recovered) for real.

    Exits 1 when any check fails (an integrity mismatch, an RPO above the profile's bound, a phase past its
    deadline); the report says which.
    """
    from dumont.drill.report import write_reports
    from dumont.drill.runner import DrillOptions, run_drill
    from dumont.drill.workspace import parse_size

    options = DrillOptions(scenario=scenario, profile=profile, size_bytes=parse_size(size), files=files,
                           normal_passes=passes,
                           corrupt_standby=corrupt_standby, keep_cloud=keep_cloud, quiet=as_json, link=link)
    folder = out or Path("reports") / time.strftime("drill-%Y%m%d-%H%M%S")
    data = run_until_done(run_drill(options))
    paths = write_reports(data, folder)
    if as_json:
        click.echo(json.dumps({k: v for k, v in data.items() if k not in ("timeline", "metrics_scrape")},
                              indent=2, default=str))
    else:
        for check in data["checks"]:
            click.echo(f"{'PASS' if check['ok'] else 'FAIL'}  {check['name']}: {check['detail']}")
        click.echo(f"drill {'passed' if data['ok'] else 'FAILED'} in {data['total_seconds']:.1f} s; report: "
                   f"{paths['markdown']} (also {paths['html'].name}, {paths['json'].name})")
    if not data["ok"]:
        raise DumontError("the drill found a problem; see the report's failed checks")
