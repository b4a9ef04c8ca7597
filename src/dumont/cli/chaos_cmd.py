"""``dumont chaos``: a seeded campaign of combined faults against a pair on the local cloud, then the checker."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from dumont.cli.common import json_option, run_until_done
from dumont.errors import DumontError

KINDS = ("gpu_kill", "gpu_outbid", "gpu_blackhole", "host_key_change", "standby_preempt", "link_degrade",
         "controller_kill", "api_errors")


@click.command("chaos")
@click.option("--minutes", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="How long faults keep coming (the recovery from the last one comes after).")
@click.option("--pairs", type=click.IntRange(min=1, max=10), default=1, show_default=True,
              help="How many pairs (each its own GPU, standby, endpoint and writer); faults pick one at random.")
@click.option("--seed", type=int, default=20261202, show_default=True, help="The same seed replays the same plan.")
@click.option("--gap", type=click.FloatRange(min=5.0), default=30.0, show_default=True,
              help="Mean seconds between two faults (each gap is drawn between half and one and a half of it).")
@click.option("--kinds", default=",".join(KINDS), show_default=True,
              help="Comma-separated fault kinds to draw from.")
@click.option("--keep-cloud", is_flag=True, help="Keep the campaign's local cloud directory for inspection (it is "
              "always kept when the campaign finds a violation or fails).")
@json_option
def chaos_command(minutes: float, pairs: int, seed: int, gap: float, kinds: str, keep_cloud: bool,
                  as_json: bool) -> None:
    """Inject a seeded schedule of faults into a pair on the local cloud while a writer runs, then check that
    nothing acknowledged was lost, nothing torn, no failover came without a fault, nothing leaked and the pair
    came back to protected each time. Exits 1 on any violation; each names the seed and time to replay it."""
    from dumont.chaos.campaign import ChaosOptions, run_chaos

    chosen = frozenset(k.strip() for k in kinds.split(",") if k.strip())
    root = Path(tempfile.mkdtemp(prefix="dumont-chaos-"))
    options = ChaosOptions(seed=seed, minutes=minutes, pairs=pairs, mean_gap=gap, kinds=chosen,
                           say=(lambda _line: None) if as_json else click.echo)
    try:
        result = run_until_done(run_chaos(root, options))
    except DumontError:
        click.echo(f"the campaign's local cloud (logs, state) is kept in {root}", err=True)
        raise
    except BaseException:  # interrupted: what it started is stopped; its files go unless asked to keep them
        if not keep_cloud:
            shutil.rmtree(root, ignore_errors=True)
        raise
    # A campaign that found a violation keeps its cloud: the controller's log and state are how it is explained.
    keep_cloud = keep_cloud or not result.ok
    if not keep_cloud:
        shutil.rmtree(root, ignore_errors=True)
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "seed": seed, "seconds": round(result.seconds, 1),
                               "plan": [f.describe() for f in result.plan], "skipped": result.skipped,
                               "violations": [v.describe(seed) for v in result.violations],
                               "outcomes": [vars(o) for o in result.outcomes()]}, indent=2))
    else:
        click.echo("schedule:")
        skipped = set(result.skipped)
        for fault in result.plan:
            line = fault.describe()
            note = "  (skipped: nothing to hit then, or the moment never came)" if line in skipped else ""
            click.echo(f"  {line}{note}")
        click.echo(result.table())
        for violation in result.violations:
            click.echo(f"VIOLATION  {violation.describe(seed)}")
        if keep_cloud:
            click.echo(f"local cloud kept in {root}")
    if not result.ok:
        raise DumontError(f"the chaos campaign found {len(result.violations)} violation(s) (seed {seed})",
                          hint=f"replay it with: dumont chaos --seed {seed} --minutes {minutes:g} --pairs {pairs} "
                                  f"--gap {gap:g} --kinds {','.join(sorted(chosen))}")
