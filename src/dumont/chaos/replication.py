"""The replication campaign: the primary killed at random instants of passes over a workspace that changes
between them, each kill followed by a pass that must succeed, and after every kill each snapshot the standby
retains checked twice: by the standby's agent against its manifest, and file by file for torn content (every
file the workspace holds checks itself).

A seed makes a campaign repeatable: the same seed gives the same changes and the same kill instants (as far as
the passes' own timing allows), and every problem is reported with the seed and the round to replay it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dumont.agent.common import snapshot_name
from dumont.errors import DumontError
from dumont.localcloud.pool import HostPool
from dumont.replication.engine import Replicator
from dumont.replication.hostagent import HostAgent

DIGEST = 32  # a self-checking file ends with the SHA-256 of what comes before it
BIG_FILES = ("big-0.bin", "big-1.bin", "big-2.bin", "big-3.bin")


def self_checking(body: bytes) -> bytes:
    """``body`` followed by its own SHA-256: a copy that is torn or mixes two versions no longer matches."""
    return body + hashlib.sha256(body).digest()


def is_whole(data: bytes) -> bool:
    """Whether ``data`` is one complete self-checking version."""
    return len(data) >= DIGEST and hashlib.sha256(data[:-DIGEST]).digest() == data[-DIGEST:]


class ChangingWorkspace:
    """A workspace that changes between passes: files added, changed, deleted and renamed, a folder renamed,
    big files rewritten; every file checks itself."""

    def __init__(self, root: Path, seed: int, *, small_files: int = 300, big_bytes: int = 6 * 1024 * 1024) -> None:
        rng = random.Random(seed)  # noqa: S311 - repeatable content, not a secret
        self.root, self.rng, self.big_bytes = root, rng, big_bytes
        self.small = root / "small"
        self.small.mkdir(parents=True, exist_ok=True)
        for i in range(small_files):
            self._write(self.small / f"f{i}.txt", rng.randint(1, 4096))
        for name in BIG_FILES:
            self._write(root / name, big_bytes)

    def _write(self, path: Path, size: int) -> None:
        path.write_bytes(self_checking(self.rng.randbytes(max(1, size))))

    def change(self, round_no: int) -> None:
        """One round of changes (round numbers keep new names unique)."""
        rng = self.rng
        files = sorted(p for p in self.small.rglob("*") if p.is_file())
        for path in rng.sample(files, min(3, len(files))):
            path.unlink()
        for i in range(3):
            self._write(self.small / f"r{round_no}-{i}.txt", rng.randint(1, 4096))
        for path in rng.sample(files, min(5, len(files))):
            if path.exists():
                self._write(path, rng.randint(1, 4096))
        for path in rng.sample(files, min(2, len(files))):
            if path.exists():
                path.rename(path.with_name(f"renamed-{round_no}-{path.name}"))
        folder = self.small / f"folder-{round_no}"
        folder.mkdir()
        self._write(folder / "inside.txt", rng.randint(1, 4096))
        old = self.small / f"folder-{round_no - 1}"
        if old.is_dir():
            old.rename(self.small / f"moved-folder-{round_no - 1}")
        for name in rng.sample(BIG_FILES, 2):
            self._write(self.root / name, self.big_bytes)


@dataclass
class CampaignResult:
    """What a campaign did and found."""

    seed: int
    kills: int = 0  # kills that interrupted a pass
    kills_after_the_pass: int = 0  # the pass finished in the instant before the kill
    passes_before_the_kill: int = 0  # rounds whose pass finished before its kill instant (no kill)
    passes_failed_alone: int = 0
    passes_after_a_kill: int = 0  # each kill is followed by a pass that must succeed
    snapshot_checks: int = 0
    files_checked: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No snapshot was ever found damaged."""
        return not self.problems

    def table(self) -> str:
        """The campaign as a small table."""
        rows = [("kills that interrupted a pass", self.kills),
                ("kills just after a pass ended", self.kills_after_the_pass),
                ("passes that ended before their kill instant", self.passes_before_the_kill),
                ("passes that failed on their own", self.passes_failed_alone),
                ("passes after a kill (each must succeed)", self.passes_after_a_kill),
                ("snapshot checks (every retained snapshot after every kill)", self.snapshot_checks),
                ("files checked for torn content", self.files_checked), ("problems", len(self.problems)),
                ("seconds", f"{self.seconds:.1f}"), ("seed", self.seed)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


async def check_snapshots(standby: HostAgent, snapshots_dir: Path, result: CampaignResult, where: str) -> None:
    """Every snapshot the standby retains: its agent re-hashes it against its manifest, and every file in it
    must be one whole self-checking version with no temporary or partial file beside it."""
    status = await standby.status()
    for snapshot in status.snapshots:
        for problem in await standby.verify_snapshot(snapshot.seq):
            result.problems.append(f"{where}: snapshot {snapshot.seq}: {problem}")
        tree = snapshots_dir / snapshot_name(snapshot.seq) / "tree"
        for path in tree.rglob("*"):
            if path.name.startswith(".") or "~tmp~" in path.name:
                result.problems.append(f"{where}: snapshot {snapshot.seq}: a temporary file {path.relative_to(tree)}")
            elif path.is_file() and not path.is_symlink():
                result.files_checked += 1
                if not is_whole(path.read_bytes()):
                    result.problems.append(f"{where}: snapshot {snapshot.seq}: {path.relative_to(tree)} is torn")
        result.snapshot_checks += 1


async def run_campaign(pool: HostPool, *, primary: str, replicator: Replicator, standby: HostAgent,
                       snapshots_dir: Path, workspace: ChangingWorkspace, kills: int, seed: int,
                       progress: Callable[[CampaignResult, int], None] | None = None) -> CampaignResult:
    """Kill host ``primary`` at a random instant of ``kills`` passes (the workspace changed before each one),
    start it again, and check every retained snapshot after each kill; give up after three rounds per kill."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable schedule, not a secret
    result = CampaignResult(seed)
    started = time.monotonic()
    duration = (await replicator.run_pass()).seconds
    limit = kills * 3  # a round whose pass ends before its kill instant lands no kill
    for round_no in range(1, limit + 1):
        if result.kills >= kills:
            break
        workspace.change(round_no)
        task = asyncio.create_task(replicator.run_pass())
        done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 0.9 * duration))
        where = f"seed {seed}, round {round_no}"
        if task in done:
            if task.exception() is None:
                duration = task.result().seconds
                result.passes_before_the_kill += 1
            else:
                result.passes_failed_alone += 1
                await check_snapshots(standby, snapshots_dir, result, where)
            continue
        await pool.kill(primary)
        try:
            duration = (await asyncio.wait_for(task, 120)).seconds
            result.kills_after_the_pass += 1
        except DumontError:
            result.kills += 1
        await check_snapshots(standby, snapshots_dir, result, where)
        await pool.start(primary)
        # The pass after a kill must succeed (the standby discards what the killed one left), and its snapshot
        # joins the retained ones, so the next kill lands on top of hard links shared with older snapshots.
        try:
            after = await replicator.run_pass()
            duration = after.seconds
            result.passes_after_a_kill += 1
        except DumontError as exc:
            result.problems.append(f"{where}: the pass after the kill failed: {exc}")
        if progress is not None:
            progress(result, round_no)
    workspace.change(limit + 1)
    final = await replicator.run_pass()
    if final.snapshot_seq is None or not final.copied:
        result.problems.append(f"seed {seed}: the last pass after the campaign left no new snapshot")
    else:
        manifest = await standby.manifest(final.snapshot_seq)
        for problem in await standby.verify_tree(manifest, root=os.fspath(workspace.root)):
            result.problems.append(f"seed {seed}: the workspace against the last snapshot: {problem}")
    await check_snapshots(standby, snapshots_dir, result, f"seed {seed}, at the end")
    result.seconds = time.monotonic() - started
    return result
