"""The drill's report in Markdown (shaped like the seed's), JSON (every figure) and HTML (with the timeline)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dumont.drill.html import describe_figure, render_html
from dumont.replication.guards import human_bytes


def write_reports(data: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.md, report.json, report.html (and metrics.prom when scraped) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    paths["markdown"].write_text(render_markdown(data))
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths["html"].write_text(render_html(data))
    if data.get("metrics_scrape"):
        paths["metrics"] = out / "metrics.prom"
        paths["metrics"].write_text(data["metrics_scrape"])
    return paths


def _s(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f} s" if isinstance(value, int | float) else "n/a"


def render_markdown(data: dict[str, Any]) -> str:
    """The seed's report, with every number measured in this run."""
    lines: list[str] = []
    add = lines.append
    opts, cfg = data["options"], data["config"]
    verdict = "PASSED" if data["ok"] else "FAILED"
    add("# DRILL REPORT: CPU STANDBY WITH AUTOMATIC FAILOVER")
    add("")
    add(f"**Date:** {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(data['started_at']))}  ")
    add("**System:** Dumont Standby on the local cloud (real sshd hosts, Vast and GCP API emulators)  ")
    add(f"**Scenario:** {opts['scenario']}, profile {opts['profile']}, workspace {human_bytes(opts['size_bytes'])}  ")
    if opts.get("link"):
        add(f"**Link:** every host behind `{opts['link']}` ({opts['link_description']})  ")
    add(f"**Verdict:** {verdict} — every figure below was measured in this run")
    add("")
    add("## Summary")
    add("")
    for check in data["checks"]:
        add(f"- {'✅' if check['ok'] else '❌'} {check['name']}: {check['detail']}")
    add("")
    add(f"**Total time:** {_s(data['total_seconds'])} (the seed's simulation: {data['seed']['total']} s)")
    add("")
    _architecture(add, data)
    _phases(add, data)
    _critical(add, data)
    _link(add, data)
    _loss_and_integrity(add, data)
    _timeline(add, data)
    add("## Verdict")
    add("")
    failed = [c for c in data["checks"] if not c["ok"]]
    add("All checks passed." if not failed else "Failed checks:")
    for check in failed:
        add(f"- {check['name']}: {check['detail']}")
    add("")
    del cfg
    return "\n".join(lines) + "\n"


def _architecture(add: Any, data: dict[str, Any]) -> None:
    cfg, env = data["config"], data["environment"]
    setup: dict[str, Any] = next((p for p in data["phases"] if p["key"] == "setup"), {"figures": {}})
    add("## Architecture tested")
    add("")
    add("```")
    add(f"GPU instance (local Vast.ai market)   {setup['figures'].get('gpu_instance', '?')}")
    add("   | rsync over SSH, direct push with the pair key, every "
        f"{cfg.get('sync_interval_seconds', '?')} s; verified snapshots")
    add("   v")
    add(f"CPU standby (local GCP, {cfg.get('standby_machine', '?')}, spot={cfg.get('gcp_spot')})   "
        f"{setup['figures'].get('standby_instance', '?')}")
    add("Stable SSH endpoint: a TCP relay on the controller; every host presents a certificate from the pair's host CA")
    add("```")
    add("")
    add("### Configuration")
    add("")
    add("```")
    for key, value in cfg.items():
        add(f"{key}: {value}")
    add("```")
    add(f"Machine: {env.get('cpus')} CPUs, {env.get('system')}, Python {env.get('python')}")
    add("")


def _phases(add: Any, data: dict[str, Any]) -> None:
    add("## Performance data")
    add("")
    for number, phase in enumerate(data["phases"], start=1):
        seed = data["seed"].get(phase["key"])
        add(f"### Phase {number}: {phase['title']} ({_s(phase['seconds'])})")
        add("")
        if phase.get("note"):
            add(phase["note"])
            add("")
        add("| measure | value |")
        add("|---|---|")
        add(f"| duration | {_s(phase['seconds'], 3)} (seed: {seed if seed is not None else 'n/a'} s) |")
        if phase.get("deadline_seconds") is not None:
            add(f"| deadline | {phase['deadline_seconds']:g} s |")
        for key, value in phase["figures"].items():
            if key == "salvaged" and isinstance(value, dict):
                add(f"| salvaged | {value['count']} file(s) in {value['folder']} in {_s(value['seconds'], 3)} |")
            elif key != "passes":
                add(f"| {key.replace('_', ' ')} | {describe_figure(value)} |")
        for step in phase["steps"]:
            add(f"| step: {step.get('name', step.get('step'))} | {_s(step['seconds'], 3)} |")
        add("")


def _critical(add: Any, data: dict[str, Any]) -> None:
    phases = {p["key"]: p for p in data["phases"]}
    recovery = {s.get("name"): s["seconds"] for s in phases.get("recovery", {}).get("steps", [])}
    seed = data["seed"]
    rows = [
        ("Failure detection", phases.get("detection", {}).get("seconds"),
         f"~{seed['detection']} s (~{seed['detection_production']} s in production)"),
        ("Failover switch (decision to endpoint)", phases.get("failover", {}).get("figures", {}).get(
            "decision_to_switch_seconds"), f"{seed['failover']} s"),
        ("Sync pass (mean, normal operation)", data["sync"]["mean_seconds"], f"{seed['sync_pass']} s"),
        ("Recovery: search", recovery.get("search"), f"{seed['search']} s"),
        ("Recovery: rent", recovery.get("rent"), f"{seed['rent']} s"),
        ("Recovery: SSH ready", recovery.get("ssh_ready"), f"{seed['ssh_ready']} s"),
        ("Recovery: restore", recovery.get("restore"), f"{seed['restore']} s"),
        ("Recovery: final catch-up with the endpoint held", recovery.get("catching_up"), "n/a"),
        ("Total", data["total_seconds"], f"{seed['total']} s"),
    ]
    add("## Critical metrics")
    add("")
    add("| metric | measured | seed (simulated) |")
    add("|---|---|---|")
    for name, value, seed_value in rows:
        add(f"| {name} | {_s(value, 3)} | {seed_value} |")
    add("")


def _link(add: Any, data: dict[str, Any]) -> None:
    link = data.get("link")
    if not link:
        return
    mb = 1e6
    restore = (f"{_s(link['restore_seconds'], 3)} for {link['restore_bytes'] / mb:.1f} MB"
               if link["restore_seconds"] is not None and link["restore_bytes"] is not None else "not measured")
    plain = (f"{_s(link['plain_rsync_seconds'], 3)} for {link['plain_rsync_bytes'] / mb:.1f} MB"
             if link["plain_rsync_seconds"] is not None else "not measured")
    rows = [
        ("health checks fitted to the link", f"probe timeout {link['probe_timeout_seconds']:g} s, every "
                                             f"{link['health_check_interval']:g} s"),
        ("health checks before the fault (failed)", f"{link['health_checks']} ({link['health_checks_failed']})"),
        ("failovers without a fault", str(link["failovers_before_the_fault"])),
        ("sync pass (median, normal operation)", _s(link["sync_pass_median_seconds"], 3)),
        ("restore, first pass onto the empty GPU", restore),
        ("plain rsync -a of the same tree over the same link", plain),
        ("restore speed against the plain rsync", f"{link['restore_vs_plain_rsync']} times its speed"
         if link["restore_vs_plain_rsync"] is not None else "not measured"),
        ("switch (decision to endpoint)", _s(link["switch_seconds"], 3)),
        ("first login through the endpoint", _s(link["first_login_seconds"], 3)),
    ]
    add(f"## What the link did ({link['link']}: {link['description']})")
    add("")
    add("| phase | measured |")
    add("|---|---|")
    for name, value in rows:
        add(f"| {name} | {value} |")
    add("")


def _loss_and_integrity(add: Any, data: dict[str, Any]) -> None:
    loss = data["data_loss"]
    add("## Data loss and integrity")
    add("")
    if loss:
        add(f"- Writes acknowledged by the failed GPU: {loss['writes_acknowledged_by_failed_gpu']}")
        add(f"- Lost (never reached the standby): {loss['files_lost']} files, {loss['bytes_lost']} bytes")
        add(f"- RPO: the newest write that reached the standby was {_s(loss['rpo_seconds'])} old at the failure")
    else:
        add("- No GPU was lost in this scenario; nothing could be lost.")
    add(f"- Writer: {data['writer']['records']} records in {data['writer']['sessions']} sessions through the endpoint")
    for name, info in data["hashes"].items():
        add(f"- Hashed {info['files']} files: {info['where']} ({name})")
    for name, problems in data["integrity"].items():
        add(f"- {name}: " + ("identical" if not problems else f"{len(problems)} mismatch(es): " + "; ".join(
            problems[:10])))
    add("")
    recovered: dict[str, Any] = next((p for p in data["phases"] if p["key"] == "recovered"), {"figures": {}})
    salvaged = recovered["figures"].get("salvaged")
    if isinstance(salvaged, dict):
        add(f"Salvaged from the outbid GPU {salvaged['instance_id']} into {salvaged['folder']} on the new GPU "
            "(what it wrote after its last pass; never over a file of the live workspace):")
        add("")
        add("| path | size | mtime |")
        add("|---|---|---|")
        for item in salvaged["files"]:
            stamp = time.strftime("%H:%M:%S", time.localtime(item["mtime"]))
            add(f"| {item['path']} | {item['size']} B | {stamp} |")
        add("")


def _timeline(add: Any, data: dict[str, Any]) -> None:
    origin = data["started_at"]
    add("## Timeline")
    add("")
    add("```")
    for phase in data["phases"]:
        add(f"T={phase['started'] - origin:8.2f}s  {phase['title']} ({phase['seconds']:.2f} s)")
    add("")
    for event in data["timeline"]["events"]:
        if event["kind"] in ("state", "failover", "gpu_rented", "recovery_step", "restore_copied", "recovered",
                             "standby_created", "standby_replaced", "instance_destroyed", "alert", "fenced"):
            add(f"T={event['at'] - origin:8.2f}s  {event['kind']}: {event['reason']}")
    add("```")
    add("")
