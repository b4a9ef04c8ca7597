"""``dumont drill``: the seed's seven phases, for real, on the local cloud, with every figure measured.

Setup rents a GPU on the local Vast market, fills its workspace and starts the real controller, which creates the
standby on the local GCP and syncs it. A writer job then writes numbered records through the endpoint while
passes run. The scenario's fault is injected; the drill measures detection, the switch, the recovery's steps and
the way back, and proves integrity with its own content hashes of the original GPU at the failure, the standby
at failover and the new GPU at the end.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dumont.core.hosts import SshHosts, target_of
from dumont.core.layout import ControllerLayout
from dumont.core.progress import describe_progress
from dumont.drill import checks
from dumont.drill.integrity import TreeHashes, hash_tree
from dumont.drill.profiles import PROFILES, SCENARIOS, fit_to_link
from dumont.drill.stack import Stack, build_stack, tear_down
from dumont.drill.timeline import Timeline
from dumont.drill.workspace import build_workspace
from dumont.drill.writer import Writer
from dumont.errors import DumontError, UsageError
from dumont.localcloud.link import profile as link_profile
from dumont.localcloud.ready import controller_dir
from dumont.transport.rsync import clean_channel
from dumont.transport.ssh import run_local


@dataclass(frozen=True)
class DrillOptions:
    """What to run."""

    scenario: str = "gpu-kill"
    profile: str = "fast"
    size_bytes: int = 32 * 1000**2
    files: int = 50
    normal_passes: int = 5
    corrupt_standby: str | None = None  # test hook: damage this file on the standby before the failure
    keep_cloud: bool = False
    quiet: bool = False
    link: str | None = None  # a link profile every host of the drill's cloud sits behind (localcloud/link.py)


@dataclass
class DrillRun:
    """A drill in progress: its stack, writer, timeline and the hashes it took."""

    options: DrillOptions
    stack: Stack
    timeline: Timeline
    writer: Writer
    hashes: dict[str, TreeHashes] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        """The controller's configuration."""
        return self.stack.config

    def host_of(self, role: str) -> Any:
        """The local host serving ``primary`` or ``standby`` now."""
        return self.stack.host(self.stack.status()[role]["instance_id"])


async def run_drill(options: DrillOptions) -> dict[str, Any]:
    """Run the whole drill and return its report data (every figure measured in this run)."""
    if options.scenario not in SCENARIOS:
        raise UsageError(f"--scenario {options.scenario!r} is unknown", hint=f"one of {', '.join(SCENARIOS)}")
    timeline = Timeline(quiet=options.quiet)
    cloud_root = Path(tempfile.mkdtemp(prefix="dumont-drill-"))
    run: DrillRun | None = None
    error: str | None = None
    try:
        run = await _setup(options, timeline, cloud_root)
        await _normal_operation(run)
        if options.scenario == "standby-preempt":
            await _standby_loss(run)
        else:
            await _gpu_failure(run)
            await _recovery(run)
        await _recovered(run)
    except (DumontError, TimeoutError, AssertionError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        timeline.say(f"drill stopped: {error}")
    finally:
        timeline.end()
        leftovers = await _tear_down(run, cloud_root, options.keep_cloud)
    return checks.report(options, timeline, run, error=error, leftovers=leftovers, environment=_environment())


async def _setup(options: DrillOptions, timeline: Timeline, root: Path) -> DrillRun:
    size_factor = max(1.0, options.size_bytes / 200e6)
    phase = timeline.begin("setup", deadline_seconds=120 * size_factor)
    started = time.time()
    link = link_profile(options.link) if options.link else None
    stack = await build_stack(root, {"auto_recovery": True}, fit_to_link(PROFILES[options.profile], link), link=link)
    phase.steps.append({"step": "GPU rented on the local Vast market", "seconds": round(time.time() - started, 3)})
    gpu_id = str(stack.config.pairs[0].primary.instance_id)
    mark = time.time()
    shape = await asyncio.to_thread(build_workspace, stack.host(gpu_id).workspace, size_bytes=options.size_bytes,
                                    files=options.files)
    phase.steps.append({"step": f"workspace written ({options.size_bytes / 1e6:.0f} MB, {shape['files']} files)",
                        "seconds": round(time.time() - mark, 3)})
    mark = time.time()
    await stack.start_controller()
    stack.controller.ctx.listeners.append(timeline.on_event)
    stack.controller.tick_listeners.append(lambda tick: _record_tick(stack, timeline, tick))
    phase.steps.append({"step": "controller started", "seconds": round(time.time() - mark, 3)})
    mark = time.time()
    await stack.wait_for("the standby and its first pass", _synced, 300 * size_factor)
    phase.steps.append({"step": "standby created (GCP spot) and first full pass", "seconds":
                        round(time.time() - mark, 3)})
    phase.figures.update(workspace_bytes=options.size_bytes, workspace_files=shape["files"],
                         gpu_instance=gpu_id, standby_instance=stack.status()["standby"]["instance_id"])
    ssh_config = controller_dir(stack.root) / "ssh" / "main" / "config"
    return DrillRun(options, stack, timeline, Writer(ssh_config, "dumont-main"))


def _record_tick(stack: Stack, timeline: Timeline, tick: int) -> None:
    rt = stack.pair
    timeline.ticks.append({"at": time.time(), "tick": tick, "state": str(rt.state),
                           "primary_failures": rt.memory.primary_failures,
                           "standby_failures": rt.memory.standby_failures})


def _synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


async def _normal_operation(run: DrillRun) -> None:
    """N passes with the writer running, and the health checks meanwhile."""
    interval = run.config.sync_interval_seconds
    phase = run.timeline.begin("normal", deadline_seconds=(run.options.normal_passes + 2) * (interval + 30))
    run.writer.start()
    first_seq = run.stack.status()["last_sync"]["seq"]
    target = first_seq + run.options.normal_passes
    await run.stack.wait_for(f"{run.options.normal_passes} passes", lambda s: s["last_sync"]["seq"] >= target,
                             phase.deadline_seconds or 600)
    passes = [p for p in run.stack.controller.ctx.store.recent_passes("main") if first_seq < p["seq"] <= target]
    ticks = [t for t in run.timeline.ticks if t["at"] >= phase.started]
    phase.figures.update(syncs=len(passes), health_checks=len(ticks),
                         health_checks_failed=sum(1 for t in ticks if t["primary_failures"]),
                         records_written=len(run.writer.records), passes=passes)
    if run.options.corrupt_standby:
        _corrupt_standby(run, run.options.corrupt_standby)


def _corrupt_standby(run: DrillRun, path: str) -> None:
    """Test hook: damage one file of the standby's copy (snapshot and promotion candidate) before the failure."""
    standby = run.host_of("standby")
    snapshots = sorted((standby.data_dir / "snapshots").iterdir())
    for copy in (snapshots[-1] / "tree" / path, standby.data_dir / "candidate" / path):
        if copy.exists():
            copy.chmod(0o644)
            with open(copy, "r+b") as handle:
                handle.write(b"CORRUPTED BY THE DRILL")
    run.timeline.say(f"  (test hook) corrupted {path} on the standby")


async def _inject(run: DrillRun) -> float:
    """Apply the scenario's fault; return when it happened."""
    scenario = run.options.scenario
    role = "standby" if scenario == "standby-preempt" else "primary"
    target = run.host_of(role)
    run.facts["failed_instance"] = run.stack.status()[role]["instance_id"]
    emulators = {e.name: e for e in run.stack.cloud.emulators}
    at = time.time()
    if scenario == "gpu-kill":
        await run.stack.cloud.pool.kill(target.name)
    elif scenario == "gpu-partition":
        await run.stack.cloud.pool.partition(target.name)
    elif scenario == "gpu-outbid":
        await emulators["vast"].fault("outbid", target)
    else:
        await emulators["gcp"].fault("preempt", target)
    run.facts["failed_host"] = target.name
    return at


async def _gpu_failure(run: DrillRun) -> None:
    """Failure, detection and failover of the GPU; hashes of the GPU at the failure and the standby after it."""
    cfg = run.config
    phase = run.timeline.begin("failure", deadline_seconds=10)
    gpu = run.host_of("primary")
    failed_at = await _inject(run)
    run.facts["failed_at"] = failed_at
    run.hashes["gpu_at_failure"] = await hash_tree(gpu.workspace, f"{gpu.name} (original GPU) at the failure")
    phase.figures.update(scenario=run.options.scenario, host=gpu.name,
                         fault_at=f"T+{failed_at - run.timeline.origin:.2f} s",
                         files_on_gpu=run.hashes["gpu_at_failure"].count)
    detection_bound = cfg.health_check_interval * cfg.failover_threshold + 3 * cfg.health.probe_timeout_seconds + 2
    run.timeline.begin("detection", deadline_seconds=detection_bound)
    await run.stack.wait_for("the failover", lambda s: s["state"] in ("failed_over", "recovering"),
                             detection_bound + 30)
    decided, switched = run.stack.pair.timings["decided_at"], run.stack.pair.timings["endpoint_switched_at"]
    detection = run.timeline.phases[-1]
    detection.started, detection.ended = failed_at, decided
    detection.figures.update(seconds=round(decided - failed_at, 3), threshold=cfg.failover_threshold,
                             interval=cfg.health_check_interval,
                             reason=run.timeline.events_of("failover")[-1]["reason"])
    failover = run.timeline.begin("failover", deadline_seconds=1.0 if run.options.profile == "fast" else 3.0)
    failover.started, failover.ended = decided, switched
    await _after_failover(run, failover.figures)


async def _after_failover(run: DrillRun, figures: dict[str, Any]) -> None:
    cpu = run.host_of("primary")
    login_started = time.time()
    login = await run.stack.endpoint_ssh("sh", "-c", 'printenv DUMONT_HOST; printf "written on the CPU during the '
                                         'failover\\n" > "$DUMONT_WORKSPACE/cpu-notes.txt"')
    figures.update(decision_to_switch_seconds=round(run.stack.pair.timings["endpoint_switched_at"]
                                                    - run.stack.pair.timings["decided_at"], 4),
                   first_login_seconds=round(time.time() - login_started, 3), login_host=login.last_line,
                   login_ok=login.returncode == 0 and login.last_line == cpu.name, cpu=cpu.name)
    run.hashes["standby_at_failover"] = await hash_tree(cpu.workspace, f"{cpu.name} (standby) after the failover")
    run.facts["cpu"] = cpu.name


async def _recovery(run: DrillRun) -> None:
    """Search, rent, SSH ready, restore: measured from the controller's recovery events."""
    size_factor = max(1.0, run.options.size_bytes / 200e6)
    phase = run.timeline.begin("recovery", deadline_seconds=run.config.ssh_wait_timeout + 300 * size_factor)
    phase.started = run.stack.pair.timings["endpoint_switched_at"]  # the controller starts recovering right away
    old = run.facts.get("failed_host", "")
    seen: list[dict[str, Any]] = []  # the restore's progress as the status showed it

    def recovered_onto_new_gpu(status: dict[str, Any]) -> bool:
        moving = (status.get("operation") or {}).get("progress")
        if moving and (not seen or seen[-1] != moving):
            seen.append(moving)
        return bool(_synced(status) and status["primary"]["role"] == "gpu"
                    and run.stack.host(status["primary"]["instance_id"]).name != old)

    await run.stack.wait_for("the recovery", recovered_onto_new_gpu, phase.deadline_seconds or 1800)
    phase.steps.extend(checks.recovery_steps(run.timeline, phase.started))
    recovered = run.timeline.events_of("recovered", phase.started)
    copied = run.timeline.events_of("restore_copied", phase.started)
    phase.figures.update(new_gpu=run.host_of("primary").name,
                         catch_up=_catch_up(recovered[-1]["data"]) if recovered else "no recovered event",
                         rentals="; ".join(e["reason"] for e in run.timeline.events_of("gpu_rented", phase.started)),
                         restore=copied[-1]["reason"] if copied else "no restore event",
                         restore_progress_seen=_progress_seen([describe_progress(p) for p in seen]))


def _catch_up(data: dict[str, Any]) -> str:
    """The final catch-up as a sentence: what it copied, how long it took, the epoch it ended in."""
    return (f"{data.get('catch_up_files', '?')} file(s) in {float(data.get('catch_up_seconds', 0)):.2f} s, "
            f"then epoch {data.get('epoch', '?')}")


def _progress_seen(seen: list[str]) -> str:
    """The restore's progress as the status showed it: the first and the last readings, and how many."""
    if not seen:
        return "none (the restore finished between two status reads)"
    if len(seen) <= 2:
        return " → ".join(seen)
    return f"{seen[0]} → … → {seen[-1]} ({len(seen)} readings)"


async def _standby_loss(run: DrillRun) -> None:
    """The standby is preempted: detected, replaced and fully synced; the GPU must be untouched."""
    cfg = run.config
    gpu_before = run.stack.status()["primary"]["instance_id"]
    standby_before = run.stack.status()["standby"]["instance_id"]
    run.timeline.begin("failure", deadline_seconds=10)
    run.facts["failed_at"] = await _inject(run)
    run.timeline.phases[-1].figures.update(scenario=run.options.scenario, host=run.facts["failed_host"])
    bound = cfg.health_check_interval * cfg.failover_threshold + 3 * cfg.health.probe_timeout_seconds + 2
    detection = run.timeline.begin("detection", deadline_seconds=bound)
    await run.stack.wait_for("the standby loss", lambda s: s["state"] == "standby_lost", bound + 30)
    detection.started = run.facts["failed_at"]
    run.timeline.end()
    failover = run.timeline.begin("failover")
    failover.note = "not needed: the GPU kept serving the endpoint while the standby was replaced"
    failover.ended = failover.started
    phase = run.timeline.begin("recovery", deadline_seconds=cfg.ssh_wait_timeout + 600)

    def protected_again(status: dict[str, Any]) -> bool:
        # A preempted standby keeps its disk: it is started again (same VM) or, failing that, replaced.
        restarted = run.timeline.events_of("standby_restarted", phase.started)
        return _synced(status) and (bool(restarted) or status["standby"]["instance_id"] != standby_before)

    await run.stack.wait_for("the standby back", protected_again, phase.deadline_seconds or 1800)
    restarted = bool(run.timeline.events_of("standby_restarted", phase.started))
    phase.figures.update(standby=run.stack.status()["standby"]["instance_id"],
                         standby_came_back="started again, disk kept" if restarted else "replaced by a new VM",
                         gpu_untouched=run.stack.status()["primary"]["instance_id"] == gpu_before
                         and not run.timeline.events_of("failover"))


async def _recovered(run: DrillRun) -> None:
    """One more pass in the new arrangement, then the final hashes."""
    phase = run.timeline.begin("recovered", deadline_seconds=120)
    if run.options.scenario == "gpu-outbid":
        # The paused GPU's newer writes are salvaged onto the new GPU before it is destroyed.
        await run.stack.wait_for("the salvage", lambda s: bool(run.timeline.events_of("salvaged")
                                                              or run.timeline.events_of("salvage_failed")), 120)
        salvaged = run.timeline.events_of("salvaged")
        phase.figures.update(salvaged=salvaged[-1]["data"] if salvaged else None)
    seq = run.stack.status()["last_sync"]["seq"]
    await run.stack.wait_for("a pass after the recovery", lambda s: s["last_sync"]["seq"] > seq, 120)
    await run.writer.stop()
    primary, standby = run.host_of("primary"), run.host_of("standby")
    run.hashes["final_primary"] = await hash_tree(primary.workspace, f"{primary.name} (primary) at the end")
    snapshots = sorted((standby.data_dir / "snapshots").iterdir())
    run.hashes["final_standby"] = await hash_tree(snapshots[-1] / "tree", f"{standby.name} (standby) at the end")
    phase.figures.update(primary=primary.name, standby=standby.name, writer_records=len(run.writer.records),
                         writer_sessions=run.writer.sessions, state=run.stack.status()["state"])
    if run.options.link:
        run.facts["plain_rsync"] = await _plain_rsync(run, snapshots[-1] / "tree")


def _tree_bytes(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


PLAIN_RSYNC_DIR = "dumont-drill-plain-rsync"  # in the login's home on the new GPU; removed right after


async def _plain_rsync(run: DrillRun, tree: Path) -> dict[str, Any]:
    """What a plain ``rsync -a`` of the restored tree onto the new GPU takes over the same link, onto an empty
    directory as the restore's first pass was: the restore's yardstick."""
    hosts, ref = run.stack.controller.ctx.hosts, run.stack.pair.primary
    if not isinstance(hosts, SshHosts) or ref is None:
        raise DumontError("the drill's controller reaches its hosts without SSH; nothing to compare the restore to")
    target = target_of(ref)
    hosts.transport.add(target)
    size = await asyncio.to_thread(_tree_bytes, tree)
    started = time.perf_counter()
    # The drill's hosts print a login banner, as chatty real ones do: the channel is kept clean the same way.
    result = await run_local(["rsync", "-a", *clean_channel(hosts.transport.rsync_shell()), f"{tree}/",
                              f"{target.alias}:{PLAIN_RSYNC_DIR}/"], timeout=1800, what="the plain rsync")
    seconds = time.perf_counter() - started
    await hosts.transport.run(target, ["rm", "-rf", PLAIN_RSYNC_DIR], timeout=120, check=False)
    if result.returncode != 0:
        raise DumontError(f"the plain rsync onto {target.alias} failed (exit {result.returncode}): "
                          f"{result.stderr.decode(errors='replace').strip()[-300:]}")
    return {"seconds": round(seconds, 3), "bytes": size}


async def _tear_down(run: DrillRun | None, cloud_root: Path, keep: bool) -> list[int]:
    leftovers: set[int] = set()
    if run is not None:
        await run.writer.stop()
        run.facts["metrics_scrape"] = await _scrape(run)
        leftovers = await tear_down(run.stack)
        run.facts["ca_key_found_on"] = await asyncio.to_thread(
            checks.hosts_holding_key, run.stack.cloud.pool.hosts_dir,
            ControllerLayout.of(run.config).pair_host_ca(run.config.pairs[0].name))
    if not keep:
        await asyncio.to_thread(shutil.rmtree, cloud_root, True)
    return sorted(leftovers)


async def _scrape(run: DrillRun) -> str | None:
    """The controller's /metrics at the end of the drill (for promtool and the report), if it serves them."""
    api = run.stack.api
    if api is None:
        return None
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api.token}"}) as http:
        try:
            response = await http.get(f"{api.url}/metrics", timeout=10)
        except httpx.HTTPError:
            return None
    return response.text if response.status_code == 200 else None


def _environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}"}
