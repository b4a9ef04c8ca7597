"""Turning what the drill measured into figures and verdicts: data lost, integrity by path, bounds, seed figures."""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dumont.drill.integrity import missing_or_changed
from dumont.drill.timeline import Check, Timeline
from dumont.localcloud.link import profile as link_profile

if TYPE_CHECKING:
    from dumont.drill.runner import DrillOptions, DrillRun

# The seed's simulated figures (seconds), shown beside ours; they were assumed, ours are measured.
SEED_FIGURES = {"setup": 2.00, "normal": 3.51, "failure": 1.10, "detection": 1.80, "failover": 2.50,
                "recovery": 5.71, "recovered": 2.00, "sync_pass": 0.200, "search": 0.50, "rent": 0.30,
                "ssh_ready": 0.60, "restore": 0.50, "total": 18.63, "detection_production": 30.0}
STEP_NAMES = {"searching": "search", "renting": "rent", "waiting_ssh": "ssh_ready", "restoring": "restore",
              "catching_up": "catching_up", "switching_back": "switching_back"}


def recovery_steps(timeline: Timeline, since: float) -> list[dict[str, Any]]:
    """Search, rent, SSH ready and restore, timed from the controller's recovery events."""
    marks = [(e["at"], e["data"].get("step")) for e in timeline.events_of("recovery_step", since)]
    recovered = timeline.events_of("recovered", since)
    ends = [m[0] for m in marks[1:]] + ([recovered[-1]["at"]] if recovered else [time.time()])
    steps = []
    for (at, step), end in zip(marks, ends, strict=True):
        steps.append({"step": step, "name": STEP_NAMES.get(str(step), str(step)), "seconds": round(end - at, 3)})
    return steps


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_loss(run: DrillRun) -> dict[str, Any]:
    """Which writes the failed GPU acknowledged that the standby never received, and how old the newest
    replicated one was at the failure (the RPO)."""
    failed_host = run.facts.get("failed_host")
    standby = run.hashes.get("standby_at_failover")
    failed_at = run.facts.get("failed_at")
    if failed_host is None or standby is None or failed_at is None:
        return {}
    acked = [r for r in run.writer.records if r.host == failed_host and r.at <= failed_at]
    lost = [r for r in acked if standby.files.get(r.path) != _sha(r.content)]
    kept = [r for r in acked if r not in lost]
    newest_kept = max((r.at for r in kept), default=None)
    return {
        "writes_acknowledged_by_failed_gpu": len(acked),
        "files_lost": len(lost), "bytes_lost": sum(len(r.content) for r in lost),
        "lost_paths": [r.path for r in lost][:50],
        "rpo_seconds": round(failed_at - newest_kept, 3) if newest_kept is not None else None,
        "newest_lost_write_age_seconds": round(failed_at - max(r.at for r in lost), 3) if lost else 0.0,
    }


def _salvage_check(run: DrillRun, loss: dict[str, Any]) -> Check:
    """Every write the outbid GPU acknowledged after its last pass is in the salvage folder on the new GPU."""
    phase = run.timeline.phase("recovered")
    salvaged = phase.figures.get("salvaged") if phase is not None else None
    if not salvaged:
        return Check("the outbid GPU's last writes were salvaged", False, "no salvaged event")
    folder = str(salvaged["folder"]).removeprefix("/workspace/")
    final = run.hashes.get("final_primary")
    by_path = {r.path: r for r in run.writer.records}
    missing = [p for p in loss.get("lost_paths", [])
               if final is None or final.files.get(f"{folder}/{p}") != _sha(by_path[p].content)]
    lost = loss.get("files_lost", 0)
    return Check("the outbid GPU's last writes were salvaged", not missing,
                 f"{lost} write(s) after the last pass, all in {salvaged['folder']} ({salvaged['count']} file(s))"
                 if not missing else f"not salvaged: {', '.join(missing[:10])}")


def hosts_holding_key(hosts_dir: Path, key: Path) -> list[str]:
    """The hosts with a file holding ``key``'s private part (hostile-review.md #11: it was on every GPU)."""
    lines = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    # The first line is the same for every unencrypted ed25519 key ("openssh-key-v1", no cipher): skip it.
    needle = "\n".join(lines[1:]).encode()
    found = []
    for host in sorted(p for p in hosts_dir.iterdir() if p.is_dir()):
        for path in host.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20 \
                    and needle and needle in path.read_bytes():
                found.append(host.name)
                break
    return found


def integrity(run: DrillRun) -> dict[str, list[str]]:
    """Mismatches by path: original GPU vs standby at failover, and what the end state must hold."""
    hashes, out = run.hashes, {}
    if "gpu_at_failure" in hashes and "standby_at_failover" in hashes:
        after = {p: h for p, h in hashes["standby_at_failover"].without_writer().items() if p != "cpu-notes.txt"}
        out["original GPU vs standby at failover"] = missing_or_changed(
            hashes["gpu_at_failure"].without_writer(), after) + missing_or_changed(
            after, hashes["gpu_at_failure"].without_writer())
    if "final_primary" in hashes and "standby_at_failover" in hashes:
        expected = dict(hashes["standby_at_failover"].without_writer())
        cpu = run.facts.get("cpu")
        for record in run.writer.records:
            if record.host == cpu or (expected and _sha(record.content) == hashes["standby_at_failover"].files.get(
                    record.path)):
                expected[record.path] = _sha(record.content)
        out["standby at failover and CPU-side writes vs final primary"] = missing_or_changed(
            expected, hashes["final_primary"].files)
    if "final_primary" in hashes and "final_standby" in hashes:
        out["final primary vs final standby snapshot"] = missing_or_changed(
            hashes["final_primary"].without_writer(), hashes["final_standby"].without_writer())
    return out


def _bounds(run: DrillRun) -> dict[str, float]:
    cfg = run.config
    return {"rpo": 2 * cfg.sync_interval_seconds + 5,
            "switch": 1.0 if run.options.profile == "fast" else 3.0}


def verdicts(run: DrillRun, loss: dict[str, Any], mismatches: dict[str, list[str]], leftovers: list[int],
             error: str | None) -> list[Check]:
    """Every check of the drill; the drill passes only if all pass."""
    result = [Check("the drill ran to the end", error is None, error or "all seven phases ran")]
    for name, problems in mismatches.items():
        result.append(Check(f"integrity: {name}", not problems,
                            "identical" if not problems else "; ".join(problems[:20])))
    bounds = _bounds(run)
    if loss.get("rpo_seconds") is not None:
        rpo = loss["rpo_seconds"]
        result.append(Check("RPO within the profile's bound", rpo <= bounds["rpo"],
                            f"newest replicated write was {rpo:.2f} s old at the failure (bound {bounds['rpo']:g} s)"))
    failover = run.timeline.phase("failover")
    if failover is not None and "decision_to_switch_seconds" in failover.figures:
        switched = failover.figures["decision_to_switch_seconds"]
        result.append(Check("endpoint serving the standby", switched <= bounds["switch"] and
                            failover.figures.get("login_ok", False),
                            f"{switched:.3f} s from the decision (bound {bounds['switch']:g} s); a login through the "
                            f"endpoint reached {failover.figures.get('login_host')}"))
    failed_at = run.facts.get("failed_at")
    if failed_at is not None:
        unjustified = [e for e in run.timeline.events_of("failover") if e["at"] < failed_at]
        result.append(Check("no failover without a fault", not unjustified,
                            "none before the fault was injected" if not unjustified else
                            "; ".join(e["reason"] for e in unjustified)))
    late = [f"{p.title} took {p.seconds:.1f} s (deadline {p.deadline_seconds:g} s)" for p in run.timeline.phases
            if not p.in_time and p.deadline_seconds is not None and p.key != "failover"]
    result.append(Check("every phase within its deadline", not late, "; ".join(late) or "yes"))
    recovery = run.timeline.phase("recovery")
    if run.options.scenario == "standby-preempt" and recovery is not None and error is None:
        untouched = bool(recovery.figures.get("gpu_untouched"))
        result.append(Check("the GPU was untouched while its standby was replaced", untouched,
                            "same GPU, no failover" if untouched else "the GPU changed or the pair failed over"))
    if run.options.scenario != "standby-preempt" and error is None:
        failed = run.facts.get("failed_instance")
        destroyed = any(e["data"].get("instance_id") == failed for e in run.timeline.events_of("instance_destroyed"))
        result.append(Check("the failed GPU was destroyed", destroyed, "instance_destroyed event seen"
                            if destroyed else "no instance_destroyed event for the failed GPU"))
    if run.options.scenario == "gpu-outbid" and error is None:
        result.append(_salvage_check(run, loss))
    if "ca_key_found_on" in run.facts:
        found = run.facts["ca_key_found_on"]
        result.append(Check("the pair's host CA key is on no host", not found,
                            f"found on {', '.join(found)}" if found else "no file of any host holds it"))
    result.append(Check("no process left behind", not leftovers, f"leftover pids: {leftovers}" if leftovers
                        else "every process of the local cloud ended"))
    return result


def link_effects(run: DrillRun) -> dict[str, Any] | None:
    """What the link did to each phase: the checks fitted to it, false strikes and failovers, sync, the restore
    against a plain rsync over the same link, and the switch (None without a link)."""
    if not run.options.link:
        return None
    cfg, timeline = run.config, run.timeline
    normal, failover = timeline.phase("normal"), timeline.phase("failover")
    failed_at = run.facts.get("failed_at", float("inf"))
    passes = normal.figures.get("passes", []) if normal else []
    copied = timeline.events_of("restore_copied")
    restore = copied[-1]["data"] if copied else {}
    plain = run.facts.get("plain_rsync") or {}
    ours, theirs = restore.get("seconds"), plain.get("seconds")
    return {
        "link": run.options.link, "description": link_profile(run.options.link).describe(),
        "probe_timeout_seconds": cfg.health.probe_timeout_seconds, "health_check_interval": cfg.health_check_interval,
        "health_checks": normal.figures.get("health_checks") if normal else None,
        "health_checks_failed": normal.figures.get("health_checks_failed") if normal else None,
        "failovers_before_the_fault": sum(1 for e in timeline.events_of("failover") if e["at"] < failed_at),
        "sync_pass_median_seconds": round(statistics.median(p["finished_at"] - p["started_at"] for p in passes), 3)
        if passes else None,
        "restore_seconds": ours, "restore_bytes": restore.get("bytes"),
        "plain_rsync_seconds": theirs, "plain_rsync_bytes": plain.get("bytes"),
        "restore_vs_plain_rsync": round(theirs / ours, 3) if ours and theirs else None,
        "switch_seconds": failover.figures.get("decision_to_switch_seconds") if failover else None,
        "first_login_seconds": failover.figures.get("first_login_seconds") if failover else None,
    }


def report(options: DrillOptions, timeline: Timeline, run: DrillRun | None, *, error: str | None,
           leftovers: list[int], environment: dict[str, Any]) -> dict[str, Any]:
    """The whole report as data (the Markdown, JSON and HTML are rendered from this)."""
    loss = data_loss(run) if run is not None else {}
    mismatches = integrity(run) if run is not None else {}
    checks = verdicts(run, loss, mismatches, leftovers, error) if run is not None else [
        Check("the drill ran to the end", False, error or "setup failed")]
    normal = timeline.phase("normal")
    passes = normal.figures.get("passes", []) if normal else []
    durations = [p["finished_at"] - p["started_at"] for p in passes]
    return {
        "ok": all(c.ok for c in checks),
        "options": {"scenario": options.scenario, "profile": options.profile, "size_bytes": options.size_bytes,
                    "files": options.files, "corrupt_standby": options.corrupt_standby, "link": options.link,
                    "link_description": link_profile(options.link).describe() if options.link else None},
        "environment": environment,
        "config": _config_summary(run),
        "started_at": timeline.origin, "total_seconds": round(time.time() - timeline.origin, 3),
        "phases": [p.as_dict() for p in timeline.phases],
        "sync": {"passes": len(passes), "mean_seconds": round(statistics.mean(durations), 4) if durations else None,
                 "min_seconds": round(min(durations), 4) if durations else None,
                 "max_seconds": round(max(durations), 4) if durations else None,
                 "bytes_sent": sum(p["bytes_sent"] for p in passes)},
        "data_loss": loss,
        "link": link_effects(run) if run is not None else None,
        "integrity": mismatches,
        "hashes": {k: {"where": v.where, "files": v.count} for k, v in (run.hashes.items() if run else [])},
        "writer": {"records": len(run.writer.records) if run else 0, "sessions": run.writer.sessions if run else 0},
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "seed": SEED_FIGURES,
        "timeline": {"events": timeline.events, "ticks": timeline.ticks},
        "metrics_scrape": run.facts.get("metrics_scrape") if run else None,
    }


def _config_summary(run: DrillRun | None) -> dict[str, Any]:
    if run is None:
        return {}
    cfg = run.config
    return {"sync_interval_seconds": cfg.sync_interval_seconds, "health_check_interval": cfg.health_check_interval,
            "failover_threshold": cfg.failover_threshold, "probe_timeout_seconds": cfg.health.probe_timeout_seconds,
            "auto_failover": cfg.auto_failover, "auto_recovery": cfg.auto_recovery, "gpu_max_price": cfg.gpu_max_price,
            "gpu_min_ram_gb": cfg.gpu_min_ram_gb, "gpu_preferred_regions": list(cfg.gpu_preferred_regions),
            "replication_mode": cfg.replication.mode, "standby_machine": cfg.standby.machine_type,
            "gcp_spot": cfg.gcp_spot}
