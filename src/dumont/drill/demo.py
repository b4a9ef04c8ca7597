"""A replication demo on the local cloud: up, sync, change, sync, verify, down, with every figure measured.

``make drill`` runs it until the full failover drill exists. It starts its own local cloud in a fresh directory
(``--state-dir``, default ``./reports/demo-<time>/cloud``), so it never disturbs a cloud you are using, and always
brings it down, also on Ctrl-C or failure. Exit 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dumont.errors import DumontError
from dumont.localcloud import control
from dumont.localcloud.access import LocalHostRef, local_hosts, local_transport, sync_once
from dumont.replication.engine import PassReport, ReplicationPolicy
from dumont.replication.guards import human_bytes
from dumont.replication.hostagent import HostAgent


def build_workspace(workspace: Path, size_mb: int) -> None:
    """A small ML-ish workspace: a model file, a CSV, a config and some source files."""
    (workspace / "src").mkdir(parents=True, exist_ok=True)
    (workspace / "model.pt").write_bytes(os.urandom(size_mb * 1024 * 1024))
    rows = "".join(f"{i},{i * 0.5},{i % 7}\n" for i in range(20_000))
    (workspace / "data.csv").write_text("id,value,bucket\n" + rows)
    (workspace / "config.json").write_text(json.dumps({"lr": 3e-4, "epochs": 10}, indent=2))
    for i in range(20):
        (workspace / "src" / f"module_{i}.py").write_text(f"VALUE = {i}\n")


def change_workspace(workspace: Path, size_mb: int) -> None:
    """Overwrite 1 MB of the model in place, delete a source file, add notes."""
    with open(workspace / "model.pt", "r+b") as handle:
        handle.seek(size_mb * 1024 * 1024 // 2)
        handle.write(os.urandom(1024 * 1024))
    (workspace / "src" / "module_0.py").unlink()
    (workspace / "notes.md").write_text("written after the first pass\n")


def say(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(message, file=sys.stderr, flush=True)


async def run_demo(state_dir: Path, size_mb: int) -> dict[str, Any]:
    """Run the demo steps against a running local cloud; return the measured figures."""
    client = control.client(state_dir)
    for name, role in (("gpu-1", "gpu"), ("cpu-1", "cpu")):
        client.post("/hosts", {"name": name, "role": role})
    hosts = local_hosts(state_dir)
    gpu, cpu = hosts["gpu-1"], hosts["cpu-1"]
    workspace = state_dir / "hosts" / "gpu-1" / "workspace"
    build_workspace(workspace, size_mb)
    policy = ReplicationPolicy()
    steps: list[dict[str, Any]] = []

    async def step(name: str) -> PassReport:
        report = await sync_once(state_dir, gpu, cpu, "demo", policy)
        steps.append({"step": name, **report.as_record()})
        say(f"  {name}: {report.seconds:.2f} s, {report.files_copied} file(s) copied, "
            f"{human_bytes(report.bytes_sent)} sent")
        return report

    say("replicating gpu-1 -> cpu-1")
    await step("first full pass")
    await step("no-change pass")
    change_workspace(workspace, size_mb)
    last = await step("pass after changes")
    problems = await verify(state_dir, gpu, cpu, last)
    return {"state_dir": str(state_dir), "passes": steps, "verify_problems": problems, "ok": not problems}


async def verify(state_dir: Path, gpu: LocalHostRef, cpu: LocalHostRef, last: PassReport) -> list[str]:
    """Re-hash the snapshot and the workspace against the snapshot's manifest."""
    assert last.snapshot_seq is not None
    async with local_transport(state_dir, [gpu, cpu]) as transport:
        standby, primary = HostAgent(transport, cpu.target), HostAgent(transport, gpu.target)
        try:
            problems = await standby.verify_snapshot(last.snapshot_seq)
            problems += await primary.verify_tree(await standby.manifest(last.snapshot_seq))
        finally:
            await standby.close()
            await primary.close()
    say(f"  verify: snapshot {last.snapshot_seq} and the workspace match the manifest"
        if not problems else f"  verify: {len(problems)} problem(s)")
    return problems


def main() -> None:
    """Entry point: ``python -m dumont.drill.demo``."""
    parser = argparse.ArgumentParser(description="Replication demo on the Dumont local cloud.")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--size-mb", type=int, default=64, help="Size of model.pt (default 64).")
    args = parser.parse_args()
    out = Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
    state_dir = (args.state_dir or out / "cloud").resolve()
    say(f"starting a local cloud in {state_dir}")
    result: dict[str, Any] = {"ok": False}
    try:
        control.start(state_dir)
        result = asyncio.run(run_demo(state_dir, args.size_mb))
    except DumontError as exc:
        result = {"ok": False, "error": str(exc)}
        say(f"error: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
        result = {"ok": False, "error": "interrupted"}
    finally:
        killed = control.stop(state_dir)
        say(f"local cloud stopped ({len(killed)} leftover process(es) killed)")
    report = state_dir.parent / "demo.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ok": result["ok"], "report": str(report)}))
    say(f"report: {report}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
