"""One replication pass, primary workspace -> standby snapshot, that can be killed at any instant.

A pass: scan the primary (hashing only what changed) and read the standby's state; diff against the standby's
newest snapshot; run the guards; stage a tree of hard links to that snapshot minus what changes; rsync only the
changed paths into it (``direct``: the primary pushes with the pair key; ``relay``: the controller pulls, then
pushes); compare what arrived with what was scanned, retrying paths that changed mid-copy and keeping the
previous version of any that never settle; then let the standby check the whole tree against the expected
manifest and rename it into place. Until that rename nothing the standby serves has changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumont.errors import AuthRefused, TransportError
from dumont.replication.guards import GuardPolicy, check_pass
from dumont.replication.hostagent import HostAgent, ScanResult, StageResult, StandbyStatus
from dumont.replication.manifest import (
    DIRECTORY,
    FILE,
    SYMLINK,
    Entry,
    Manifest,
    TreeDiff,
    diff_trees,
    expected_after_pass,
    path_key,
)
from dumont.replication.modes import DIRECT, RELAY
from dumont.transport.rsync import check_exit, parse_stats, rsync_argv, run_rsync
from dumont.transport.ssh import SshTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicationPolicy:
    """How passes run: mode, retention, guards, deadlines."""

    mode: str = DIRECT
    keep_snapshots: int = 3
    guards: GuardPolicy = field(default_factory=GuardPolicy)
    min_free_fraction: float = 0.05
    transfer_timeout: float = 3600.0
    io_timeout: int = 60
    settle_retries: int = 2
    keep_candidate: bool = True  # a standby keeps a promotion-ready copy; a GPU being restored does not need one
    bandwidth_limit_kbps: int | None = None  # rsync --bwlimit, for slow or metered links
    streams: int = 1  # parallel rsyncs (separate connections) for a direct push
    full_walk_seconds: float = 300.0  # the primary walks its whole tree at least this often (agent/tracker.py)


@dataclass(frozen=True)
class PassReport:
    """What one completed pass did; every figure is measured."""

    pair: str
    seq: int
    epoch: int
    snapshot_seq: int | None
    mode: str
    started_at: float
    finished_at: float
    files_scanned: int
    bytes_scanned: int
    files_copied: int
    files_deleted: int
    bytes_sent: int
    deferred: tuple[str, ...]
    copied: bool
    skipped: tuple[str, ...] = ()  # special files (FIFOs, sockets, devices) in the workspace: never copied

    @property
    def seconds(self) -> float:
        """Wall time of the pass."""
        return self.finished_at - self.started_at

    def as_record(self) -> dict[str, Any]:
        """The pass as a JSON-ready dict (paths of deferred files included)."""
        return {
            "pair": self.pair, "seq": self.seq, "epoch": self.epoch, "snapshot_seq": self.snapshot_seq,
            "mode": self.mode, "started_at": self.started_at, "finished_at": self.finished_at,
            "seconds": round(self.seconds, 4), "files_scanned": self.files_scanned,
            "bytes_scanned": self.bytes_scanned, "files_copied": self.files_copied,
            "files_deleted": self.files_deleted, "bytes_sent": self.bytes_sent, "deferred": list(self.deferred),
            "copied": self.copied, "skipped": list(self.skipped),
        }


@dataclass
class Replicator:
    """Runs passes from one primary to one standby."""

    pair: str
    primary: HostAgent
    standby: HostAgent
    policy: ReplicationPolicy = field(default_factory=ReplicationPolicy)
    transport: SshTransport | None = None  # relay mode runs rsync on the controller through it
    relay_dir: Path | None = None
    clock: Callable[[], float] = time.time
    # Told (bytes copied so far, bytes this pass copies) while a direct push runs: a restore's progress.
    on_progress: Callable[[int, int], None] | None = None
    # The standby's newest snapshot: its manifest and the digest the standby gave it.
    _manifests: dict[tuple[str, int], tuple[Manifest, str]] = field(default_factory=dict, init=False, repr=False)
    _workspace: str | None = field(default=None, init=False, repr=False)
    _last_diff: tuple[Manifest | None, Manifest, TreeDiff] | None = field(default=None, init=False, repr=False)
    _to_copy_bytes: int = field(default=0, init=False, repr=False)
    _copied_bytes: int = field(default=0, init=False, repr=False)

    async def run_pass(self) -> PassReport:
        """Run one pass; raise a GuardRefused when a guard refuses it, TransportError when a host fails."""
        started = self.clock()
        scan, status = await asyncio.gather(self.primary.scan(full_walk_seconds=self.policy.full_walk_seconds),
                                            self.standby.status())
        base = await self._base_manifest(status)
        diff = _with_suspects(self._diff(base, scan.manifest), scan.manifest, status.suspects)
        check_pass(
            source=scan.manifest, source_name=self.primary.name, source_missing=scan.missing,
            source_epoch=scan.epoch, base=base, standby_name=self.standby.name, standby_epoch=status.epoch,
            diff=diff, policy=self.policy.guards,
        )
        seq = status.last_seq + 1
        if diff.is_empty and base is not None:  # the first pass always commits, even an empty workspace
            return await self._record_unchanged(scan, status, diff, seq, started)
        return await self._copy(scan, status, base=base, diff=diff, seq=seq, started=started)

    def _diff(self, base: Manifest | None, source: Manifest) -> TreeDiff:
        """The diff of the two manifests, kept while neither changes: an unchanged scan against an unchanged
        snapshot costs no walk over a million entries."""
        known = self._last_diff
        if known is not None and known[0] is base and known[1] is source:
            return known[2]
        diff = diff_trees(base, source)
        self._last_diff = (base, source, diff)
        return diff

    async def _record_unchanged(
        self, scan: ScanResult, status: StandbyStatus, diff: TreeDiff, seq: int, started: float
    ) -> PassReport:
        latest = status.latest.seq if status.latest else None
        report = self._report(seq, scan, latest, started, diff, files_copied=0, bytes_sent=0,
                              deferred=diff.hot, copied=False)
        await self.standby.record_pass(epoch=scan.epoch, seq=seq, record=report.as_record())
        if self.policy.keep_candidate and latest is not None and status.candidate != latest:
            # After a failback nothing changed, yet the candidate is stale: a failover now would take a snapshot
            # whole instead of renaming a copy (hostile-review.md #9).
            await self.standby.refresh_candidate()
        return report

    async def _copy(
        self, scan: ScanResult, status: StandbyStatus, *, base: Manifest | None, diff: TreeDiff, seq: int,
        started: float,
    ) -> PassReport:
        epoch = scan.epoch
        expected = expected_after_pass(scan.manifest, base, diff.hot)
        source = scan.manifest.index
        stage = await self.standby.stage(
            epoch=epoch,
            base_seq=status.latest.seq if status.latest else None,
            replace=[p for p in diff.changed if not _stays_directory(p, base, source)],
            delete=list(diff.deleted),
            # Room for the files and, on a standby that keeps one, the candidate's own copy of them.
            needed_bytes=(2 if self.policy.keep_candidate else 1)
            * sum(source[p].size for p in diff.changed if source[p].kind == FILE),
            min_free_fraction=self.policy.min_free_fraction,
        )
        self._to_copy_bytes = sum(source[p].size for p in diff.changed if source[p].kind == FILE)
        self._copied_bytes = 0
        to_copy, bytes_sent = list(diff.changed), 0
        unsettled: list[str] = []
        vouched: dict[str, list[Any]] | None = None
        for attempt in range(self.policy.settle_retries + 1):
            bytes_sent += await self._transfer(to_copy, stage, frozenset(scan.sparse))
            if vouched is None:
                vouched = await self._vouch(scan, [source[p] for p in to_copy])
            # Only what this pass copied can differ from the scan; the rest are links to the base snapshot. A file
            # the source vouches for arrived as scanned (rsync checks every transfer end to end): the standby keeps
            # the claim for its commit, which checks every path anyway, and reads only the others now.
            looked_at = [p for p in diff.changed if p not in vouched]
            received = await self.standby.inspect(epoch, vouched=vouched, paths=looked_at)
            unsettled = _unsettled(expected, received, looked_at)
            if not unsettled or attempt == self.policy.settle_retries:
                break
            log.info("%s: %d path(s) changed while being copied; copying them again", self.pair, len(unsettled))
            expected = await self._refresh(expected, base, unsettled)
            to_copy = [p for p in unsettled if p in expected.index]
        if unsettled:
            await self.standby.revert(epoch, unsettled)
            expected = expected_after_pass(expected, base, unsettled)
        deferred = tuple(sorted(set(diff.hot) | set(unsettled), key=path_key))
        files_copied = sum(1 for p in diff.changed if source[p].kind == FILE)
        report = self._report(seq, scan, seq, started, diff, files_copied=files_copied, bytes_sent=bytes_sent,
                              deferred=deferred, copied=True)
        committed = await self.standby.commit(epoch=epoch, seq=seq, expected=expected, record=report.as_record(),
                                              keep=self.policy.keep_snapshots, candidate=self.policy.keep_candidate,
                                              base=(status.latest.seq, base) if status.latest and base else None)
        # The standby's own digest of what it wrote: the next pass knows its base by it, with no hashing here.
        self._manifests = {(self.standby.name, seq): (expected, str(committed["record"]["manifest_digest"]))}
        finished = self.clock()
        return _with_finish(report, finished)

    async def _vouch(self, scan: ScanResult, copied: list[Entry]) -> dict[str, list[Any]]:
        """Hashes the standby need not re-read: files that stood still on the primary from before the scan until
        after the copy (rsync checks every transfer end to end, so what arrived is what the scan hashed)."""
        files = [e for e in copied if e.kind == FILE and e.data is not None]
        if not files:
            return {}
        quiet = set(await self.primary.settled(files, scan.started_at))
        return {e.path: [e.size, e.mtime_ns, e.data] for e in files if e.path in quiet}

    async def _refresh(self, expected: Manifest, base: Manifest | None, paths: list[str]) -> Manifest:
        """Re-read entries that did not settle; a file still changing keeps its base version this pass."""
        fresh = await self.primary.entries(paths)
        current = expected.by_path()
        keep_base: list[str] = []
        for path in paths:
            entry = fresh.get(path)
            if entry is None or entry.is_hot:
                keep_base.append(path)
                continue
            old = current.get(path)
            link = old.link if old is not None else None
            current[path] = Entry(entry.path, entry.kind, entry.mode, entry.size, entry.mtime_ns, entry.data, link)
        return expected_after_pass(Manifest.of(current.values()), base, keep_base)

    async def _transfer(self, paths: list[str], stage: StageResult, sparse: frozenset[str] = frozenset()) -> int:
        """Send ``paths``; files mostly made of holes go in a compressed run of their own (hostile-review.md #10:
        a 5 GB sparse file put 5.37 GB on the wire)."""
        holes = [p for p in paths if p in sparse]
        dense = [p for p in paths if p not in sparse]
        sent = 0
        for group, compress in ((dense, False), (holes, True)):
            if group:
                sent += await self._send(group, stage, compress)
        return sent

    async def _send(self, paths: list[str], stage: StageResult, compress: bool) -> int:
        if self.policy.mode == RELAY:
            return await self._relay(paths, stage, compress)
        options: dict[str, Any] = {"timeout": self.policy.transfer_timeout, "io_timeout": self.policy.io_timeout,
                                   "bwlimit": self.policy.bandwidth_limit_kbps, "compress": compress,
                                   "streams": self.policy.streams}
        if self.on_progress is None:
            run = await self.primary.push(paths, **options)
        else:
            done_before, report = self._copied_bytes, self.on_progress
            total = max(self._to_copy_bytes, 1)

            def moved(now: int) -> None:
                self._copied_bytes = min(done_before + now, total)
                report(self._copied_bytes, total)

            run = await self.primary.push_following(paths, moved, **options)
        if "Permission denied" in run.stderr:
            raise AuthRefused(
                f"{self.standby.name} refused the pair key from {self.primary.name}: {run.stderr.strip()[-300:]}",
                hint="the primary is fenced or was never paired; pair the hosts for the current epoch",
            )
        check_exit(run.returncode, run.stderr, f"direct push {self.primary.name} -> {self.standby.name}")
        return parse_stats(run.stdout).bytes_sent

    async def _relay(self, paths: list[str], stage: StageResult, compress: bool = False) -> int:
        if self.transport is None or self.relay_dir is None:
            raise TransportError("relay mode needs the controller's SSH transport and a relay directory")
        cache = self.relay_dir
        cache.mkdir(parents=True, exist_ok=True)
        workspace = await self._primary_workspace()
        rsh, timeout, io = self.transport.rsync_shell(), self.policy.transfer_timeout, self.policy.io_timeout
        limit = self.policy.bandwidth_limit_kbps
        # --force lets a path that became a file replace a stale directory of the same name in the cache.
        pull = [*rsync_argv(rsh=rsh, io_timeout=io, bwlimit=limit, compress=compress), "--force"]
        pull += [f"{self.primary.name}:{workspace}/", f"{cache}/"]
        got = await run_rsync(pull, paths, timeout=timeout, what=f"relay pull from {self.primary.name}")
        push = rsync_argv(rsh=rsh, io_timeout=io, link_dest=stage.link_dest, bwlimit=limit, compress=compress)
        push += [f"{cache}/", f"{self.standby.name}:{stage.tree}/"]
        sent = await run_rsync(push, paths, timeout=timeout, what=f"relay push to {self.standby.name}")
        return parse_stats(got.text).bytes_received + parse_stats(sent.text).bytes_sent

    async def _primary_workspace(self) -> str:
        if self._workspace is None:
            self._workspace = (await self.primary.info()).workspace
        return self._workspace

    async def _base_manifest(self, status: StandbyStatus) -> Manifest | None:
        latest = status.latest
        if latest is None:
            return None
        key = (self.standby.name, latest.seq)
        cached = self._manifests.get(key)
        if cached is not None and cached[1] == latest.manifest_digest:
            return cached[0]
        manifest = await self.standby.manifest(latest.seq)
        self._manifests = {key: (manifest, str(latest.manifest_digest))}
        return manifest

    def _report(
        self, seq: int, scan: ScanResult, snapshot: int | None, started: float, diff: TreeDiff, *,
        files_copied: int, bytes_sent: int, deferred: tuple[str, ...], copied: bool,
    ) -> PassReport:
        return PassReport(
            pair=self.pair, seq=seq, epoch=scan.epoch, snapshot_seq=snapshot, mode=self.policy.mode,
            started_at=started, finished_at=self.clock(), files_scanned=scan.manifest.file_count,
            bytes_scanned=scan.manifest.total_bytes, files_copied=files_copied, files_deleted=len(diff.deleted),
            bytes_sent=bytes_sent, deferred=deferred, copied=copied, skipped=scan.skipped,
        )


def _with_suspects(diff: TreeDiff, source: Manifest, suspects: tuple[str, ...]) -> TreeDiff:
    """Add the files a scrub found wrong in every copy on the standby: they are sent again though unchanged."""
    files = source.index
    extra = [p for p in suspects if p in files and files[p].kind == FILE and p not in diff.changed + diff.hot]
    if not extra:
        return diff
    return TreeDiff(tuple(sorted([*diff.changed, *extra], key=path_key)), diff.deleted, diff.hot)


def _with_finish(report: PassReport, finished: float) -> PassReport:
    return PassReport(**{**report.__dict__, "finished_at": finished})


def _stays_directory(path: str, base: Manifest | None, source: Mapping[str, Entry]) -> bool:
    """A directory that is a directory on both sides keeps its staged children; only its attributes change."""
    if base is None:
        return False
    old = base.index.get(path)
    return old is not None and old.kind == DIRECTORY and source[path].kind == DIRECTORY


def _unsettled(expected: Manifest, received: Manifest, paths: Iterable[str]) -> list[str]:
    """Of ``paths``, those whose received state differs from what the scan promised.

    Directory attributes and symlink times are set by the standby at commit (rsync sets neither exactly), so
    here a directory only has to exist and a symlink only has to point at the right target.
    """
    want, have = expected.index, received.index
    bad = [path for path in paths if not _arrived(want.get(path), have.get(path))]
    return sorted(bad, key=path_key)


def _arrived(expected: Entry | None, received: Entry | None) -> bool:
    if expected is None or received is None or expected.kind != received.kind:
        return False
    if expected.kind == SYMLINK:
        return expected.data == received.data
    return expected.kind == DIRECTORY or expected == received
