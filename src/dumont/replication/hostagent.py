"""The controller's side of the host agent: install it, keep one channel open per host, call it with deadlines.

The agent (``dumont.agent``, shipped as one zip file) is copied once per host and version; afterwards every call
is one JSON line each way on a long-lived SSH session, so a no-change pass costs milliseconds, not handshakes.
Errors the agent reports are translated into our error tree here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dumont.agent.bundle import AGENT_VERSION, AGENT_ZIP
from dumont.errors import (
    AgentError,
    CommandTimeout,
    DumontError,
    HostUnreachable,
    InsufficientSpace,
    IntegrityError,
    StaleEpochRefused,
    TransportError,
)
from dumont.replication.manifest import Entry, Manifest
from dumont.transport.ssh import SSH_FAILED, SshTarget, SshTransport, classify_ssh_failure, kill_and_reap

log = logging.getLogger(__name__)

# What a host prints before our own output (a login banner, ~/.bashrc chatter) is never taken for an answer: the
# install script frames its one line, the agent its ready line, and every answer must be the agent's JSON.
PATH_MARK = "DUMONT-AGENT-PATH "
_INSTALL = (
    'd="${DUMONT_DATA_DIR:-/var/lib/dumont}"; f="$d/agent/agent-' + AGENT_VERSION + '.pyz"; '
    'if [ -f "$f" ]; then cat >/dev/null; else mkdir -p "$d/agent" && cat >"$f.$$" && mv "$f.$$" "$f"; fi; '
    f'printf "{PATH_MARK}%s\\n" "$f"'
)
NOISE_LINES = 200  # lines a host may print before the agent's ready line
_SERVE = 'exec "${DUMONT_PYTHON:-$1}" -X utf8 "$0" serve'

_ERRORS: dict[str, type[DumontError]] = {
    "StaleEpochRefused": StaleEpochRefused,
    "InsufficientSpace": InsufficientSpace,
    "IntegrityError": IntegrityError,
    "CommandTimeout": CommandTimeout,
}


@dataclass(frozen=True)
class HostInfo:
    """What a host's agent says about itself."""

    workspace: str
    data_dir: str
    epoch: int
    python: str
    rsync: str
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class ScanResult:
    """A workspace scan: its manifest, the host's epoch and what could not be replicated."""

    manifest: Manifest
    epoch: int
    skipped: tuple[str, ...]
    missing: bool
    seconds: float
    started_at: float = 0.0  # on the host's clock
    sparse: tuple[str, ...] = ()  # large files mostly made of holes (sent compressed)
    token: str | None = None  # names this walk; a later scan may answer "unchanged since" it
    unchanged: bool = False  # the host proved nothing changed since the walk this result came from


@dataclass(frozen=True)
class SnapshotInfo:
    """One complete snapshot held by a standby."""

    seq: int
    epoch: int | None
    files: int | None
    bytes: int | None
    finished_at: float | None
    manifest_digest: str | None


@dataclass(frozen=True)
class StandbyStatus:
    """A standby's replica store: its epoch, snapshots, last pass and disk."""

    epoch: int
    snapshots: tuple[SnapshotInfo, ...]
    last_pass: dict[str, Any] | None
    free_bytes: int
    total_bytes: int
    candidate: int | None = None  # the snapshot its promotion candidate is a complete copy of
    suspects: tuple[str, ...] = ()  # paths a scrub found wrong in every copy: the next pass sends them again

    @property
    def latest(self) -> SnapshotInfo | None:
        """The newest complete snapshot, if any."""
        return self.snapshots[-1] if self.snapshots else None

    @property
    def last_seq(self) -> int:
        """The sequence number of the last recorded pass (0 before the first)."""
        recorded = int(self.last_pass["seq"]) if self.last_pass else 0
        return max([recorded, *(s.seq for s in self.snapshots)])


@dataclass(frozen=True)
class StageResult:
    """Where the standby staged a pass, and the snapshot rsync may use as its delta basis."""

    tree: str
    link_dest: str | None


@dataclass(frozen=True)
class RsyncRun:
    """One rsync run on a host."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class HostAgent:
    """One host's agent, reached over one SSH channel that is reopened when it breaks."""

    transport: SshTransport
    target: SshTarget
    start_timeout: float = 30.0
    python: str = "python3"  # the interpreter the host was readied with (core/bootstrap.py)
    _proc: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)
    _path: str | None = field(default=None, init=False, repr=False)
    _last_scan: ScanResult | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """The host's alias."""
        return self.target.alias

    @property
    def is_open(self) -> bool:
        """Whether the channel is up now (a call need not start the agent first)."""
        return self._proc is not None and self._proc.returncode is None and self._path is not None

    async def ping(self, *, timeout: float) -> None:
        """A round trip to the agent: the host runs, and its SSH session and the agent process answer."""
        await self.call("ping", timeout=timeout)

    async def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0) -> dict[str, Any]:
        """Send one request and wait for its answer at most ``timeout`` seconds.

        :raises CommandTimeout: no answer in time (the channel is closed and reopened next call).
        :raises TransportError: the host could not be reached or the channel broke.
        :raises AgentError: (or a more specific ReplicationError) the agent reported a failure.
        """
        async with self._lock:
            proc = await self._ensure_channel()
            self._next_id += 1
            line = json.dumps({"id": self._next_id, "op": op, "args": args or {}}, ensure_ascii=True) + "\n"
            try:
                async with asyncio.timeout(timeout):
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(line.encode())
                    await proc.stdin.drain()
                    raw = await proc.stdout.readline()
            except TimeoutError:
                await self._drop_channel()
                raise CommandTimeout(
                    f"{op} on {self.name} did not answer within {timeout:g} s", hint="retry; the channel was reset"
                ) from None
            except ConnectionError as exc:
                await self._drop_channel()
                raise HostUnreachable(f"the agent channel to {self.name} broke during {op}: {exc}",
                                      hint="the host died or dropped the connection; retry") from exc
            except asyncio.CancelledError:
                await self._drop_channel()
                raise
            if not raw:
                raise await self._broken_channel(op)
            try:
                response = json.loads(raw)
                if not isinstance(response, dict) or response.get("id") != self._next_id:
                    raise ValueError("not an answer to this request")
            except ValueError:
                # Something other than the agent wrote to the channel: nothing it says can be trusted.
                await self._drop_channel()
                self._path = None
                raise AgentError(f"{op} on {self.name}: the host answered with something that is not the agent's "
                                 f"reply: {_shown(raw)}", hint="check what the host's login prints "
                                                              "(~/.bashrc, a MOTD) and the agent's log") from None
        return self._unwrap(op, response)

    def _unwrap(self, op: str, response: dict[str, Any]) -> dict[str, Any]:
        if response.get("ok"):
            result = response.get("result")
            if not isinstance(result, dict):
                shown = _shown(repr(response).encode())
                raise AgentError(f"{op} on {self.name}: the agent's answer holds no result: {shown}",
                                 hint="the agent on the host may be damaged; it is reinstalled when it changes")
            return result
        error = response.get("error")
        if not isinstance(error, dict):
            error = {}
        kind, message = str(error.get("kind", "AgentError")), str(error.get("message", "no message"))
        error_type = _ERRORS.get(kind)
        text = f"{op} on {self.name}: {message}"
        if error_type is not None:
            raise error_type(text)
        raise AgentError(text, kind=kind)

    async def _ensure_channel(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._path is None:
            result = await self.transport.run(
                self.target, ["sh", "-c", _INSTALL], input=AGENT_ZIP, timeout=self.start_timeout
            )
            self._path = _installed_path(self.name, result.text)
        proc = await self.transport.start(self.target, ["sh", "-c", _SERVE, self._path, self.python])
        self._proc = proc
        try:
            async with asyncio.timeout(self.start_timeout):
                ready = await self._wait_ready(proc)
        except TimeoutError:
            await self._drop_channel()
            raise CommandTimeout(f"the agent on {self.name} did not start within {self.start_timeout:g} s") from None
        if ready is None:
            self._path = None  # the host may have been replaced: reinstall next time
            raise await self._broken_channel("starting the agent")
        return proc

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> dict[str, Any] | None:
        """The agent's ready line, past whatever the host printed first; None when the channel closed."""
        assert proc.stdout is not None
        noise: list[bytes] = []
        while len(noise) < NOISE_LINES:
            line = await proc.stdout.readline()
            if not line:
                return None
            with contextlib.suppress(ValueError):
                ready = json.loads(line)
                if isinstance(ready, dict) and ready.get("ready") is True:
                    if noise:
                        log.debug("%s printed %d line(s) before the agent: %s", self.name, len(noise),
                                  _shown(b"".join(noise[:3])))
                    return ready
            noise.append(line)
        await self._drop_channel()
        self._path = None
        raise AgentError(f"the agent on {self.name} never said it was ready; the host printed "
                         f"{_shown(b''.join(noise[:3]))}...", hint="check what the host's login prints")

    async def _broken_channel(self, op: str) -> TransportError:
        proc, self._proc = self._proc, None
        stderr = b""
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    assert proc.stderr is not None
                    stderr = await proc.stderr.read()
                    await proc.wait()
        text = stderr.decode(errors="replace").strip()
        if proc is not None and proc.returncode == SSH_FAILED:
            return classify_ssh_failure(self.name, text)
        return HostUnreachable(f"the agent channel to {self.name} closed during {op}: {text or 'no message'}")

    async def _drop_channel(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        await kill_and_reap(proc)  # a frozen host's session holds the pipes: no deadline waits for them to close

    async def close(self) -> None:
        """Close the channel (the agent exits when its stdin closes)."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.returncode is not None:
                return
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    # ------------------------------------------------------------------ typed operations

    async def info(self) -> HostInfo:
        """Where the host keeps its workspace and data, and its epoch and disk."""
        r = await self.call("info")
        return HostInfo(r["workspace"], r["data_dir"], int(r["epoch"]), r["python"], r["rsync"],
                        int(r["free_bytes"]), int(r["total_bytes"]))

    async def scan(self, *, timeout: float = 600.0, full_walk_seconds: float | None = None) -> ScanResult:
        """Scan the workspace (hashing only what changed since the last scan).

        When the host can prove nothing changed since the last scan this agent received, it answers without
        walking the tree or sending a manifest, and that scan's result is returned again, marked ``unchanged``.
        """
        last = self._last_scan
        args: dict[str, Any] = {"since": last.token if last is not None else None, "delta": True}
        if full_walk_seconds is not None:
            args["full_walk_seconds"] = full_walk_seconds
        r = await self.call("scan", args, timeout=timeout)
        if r.get("unchanged"):
            if last is not None and r.get("token") == last.token:
                return replace(last, epoch=int(r["epoch"]), seconds=float(r.get("scan_seconds", 0.0)),
                               unchanged=True)
            r = await self.call("scan", {**args, "since": None}, timeout=timeout)  # not the scan we hold: walk
        token = r.get("token")
        delta = r.get("delta")
        if delta is not None and (last is None or delta.get("base") != last.token):  # not against what we hold
            r = await self.call("scan", {**args, "since": None}, timeout=timeout)
            token, delta = r.get("token"), None
        if delta is not None and last is not None:
            manifest = last.manifest.with_changes([Entry.from_wire(e) for e in delta["changed"]], delta["removed"])
        else:
            manifest = Manifest.from_wire(r["entries"])
        result = ScanResult(manifest, int(r["epoch"]), tuple(r["skipped"]),
                            bool(r["missing"]), float(r.get("scan_seconds", 0.0)), float(r.get("started_at", 0.0)),
                            tuple(r.get("sparse") or ()), token if isinstance(token, str) else None)
        self._last_scan = result if result.token is not None else None
        return result

    async def settled(self, files: list[Entry], since: float, *, timeout: float = 120.0) -> list[str]:
        """Paths of ``files`` unchanged (same size and mtime, last changed well before ``since``) on this host."""
        r = await self.call("settled", {"files": [[e.path, e.size, e.mtime_ns] for e in files], "since": since},
                            timeout=timeout)
        quiet: list[str] = r["settled"]
        return quiet

    async def entries(self, paths: list[str], *, timeout: float = 600.0) -> dict[str, Entry | None]:
        """Fresh manifest entries of workspace paths (None for a path that no longer exists)."""
        r = await self.call("entries", {"paths": paths}, timeout=timeout)
        return {p: Entry.from_wire(e) if e is not None else None for p, e in r["entries"].items()}

    async def status(self) -> StandbyStatus:
        """The replica store's epoch, snapshots and last pass."""
        r = await self.call("status")
        snaps = tuple(
            SnapshotInfo(int(s["seq"]), s.get("epoch"), s.get("files"), s.get("bytes"), s.get("finished_at"),
                         s.get("manifest_digest"))
            for s in r["snapshots"]
        )
        candidate = r.get("candidate")
        return StandbyStatus(int(r["epoch"]), snaps, r.get("last_pass"), int(r["free_bytes"]), int(r["total_bytes"]),
                             int(candidate) if isinstance(candidate, int) else None,
                             tuple(str(p) for p in r.get("suspects") or ()))

    async def manifest(self, seq: int, *, timeout: float = 120.0) -> Manifest:
        """The manifest of snapshot ``seq``."""
        r = await self.call("manifest", {"seq": seq}, timeout=timeout)
        return Manifest.from_wire(r["entries"])

    async def set_epoch(self, epoch: int, *, force: bool = False) -> int:
        """Raise the host's epoch to ``epoch`` (``force`` also lowers it; for tests and repair only)."""
        r = await self.call("set_epoch", {"epoch": epoch, "force": force})
        return int(r["epoch"])

    async def stage(self, *, epoch: int, base_seq: int | None, replace: list[str], delete: list[str],
                    needed_bytes: int, min_free_fraction: float, timeout: float = 600.0) -> StageResult:
        """Prepare the staging tree for a pass."""
        r = await self.call("stage", {"epoch": epoch, "base_seq": base_seq, "replace": replace, "delete": delete,
                                      "needed_bytes": needed_bytes, "min_free_fraction": min_free_fraction},
                            timeout=timeout)
        return StageResult(r["tree"], r.get("link_dest"))

    async def inspect(self, epoch: int, *, vouched: dict[str, list[Any]] | None = None,
                      paths: list[str] | None = None, timeout: float = 3600.0) -> Manifest:
        """The manifest of the staged tree as received (files ``vouched`` for by a settled source are not re-read);
        with ``paths``, of those paths only (the rest are links the standby made to its own snapshot)."""
        args: dict[str, Any] = {"epoch": epoch, "vouched": vouched or {}}
        if paths is not None:
            args["paths"] = paths
        r = await self.call("inspect", args, timeout=timeout)
        return Manifest.from_wire(r["entries"])

    async def revert(self, epoch: int, paths: list[str]) -> None:
        """Give ``paths`` back their base version (or drop them) in the staged tree."""
        await self.call("revert", {"epoch": epoch, "paths": paths}, timeout=600.0)

    async def commit(self, *, epoch: int, seq: int, expected: Manifest, record: dict[str, Any], keep: int,
                     candidate: bool = True, base: tuple[int, Manifest] | None = None,
                     timeout: float = 3600.0) -> dict[str, Any]:
        """Verify the staged tree equals ``expected``, make it snapshot ``seq``, refresh the promotion candidate.

        With ``base`` (the seq and manifest of the snapshot the pass was staged on), only how ``expected`` differs
        from it is sent: the standby holds that manifest, and a pass that changed ten of 100,000 files sends ten.
        """
        args: dict[str, Any] = {"epoch": epoch, "seq": seq, "record": record, "keep": keep, "candidate": candidate}
        if base is None:
            args["entries"] = expected.to_wire()
        else:
            changed, removed = expected.changes_from(base[1])
            args["delta"] = {"base_seq": base[0], "changed": [e.to_wire() for e in changed], "removed": removed}
        return await self.call("commit", args, timeout=timeout)

    async def promote(self, *, epoch: int, mode: str, timeout: float = 600.0) -> dict[str, Any]:
        """Make the newest snapshot the live workspace (``candidate``: a standby; ``take``: a restored GPU)."""
        return await self.call("promote", {"epoch": epoch, "mode": mode}, timeout=timeout)

    async def take_over(self, *, pair: str, epoch: int, timeout: float = 600.0) -> dict[str, Any]:
        """Failover on this standby as one step: fence the old primary, promote, then take ``epoch``."""
        return await self.call("take_over", {"pair": pair, "epoch": epoch, "mode": "candidate"}, timeout=timeout)

    async def salvage_signature(self, folder: str) -> tuple[int, int, int]:
        """(files, bytes, newest change in ns) of a salvage folder in the workspace."""
        r = await self.call("salvage_signature", {"folder": folder})
        return int(r["files"]), int(r["bytes"]), int(r["newest_ns"])

    async def salvage_sort(self, folder: str) -> list[dict[str, Any]]:
        """Drop what equals the live workspace from a salvage folder; the files kept (path, size, mtime)."""
        r = await self.call("salvage_sort", {"folder": folder}, timeout=600)
        kept: list[dict[str, Any]] = r["kept"]
        return kept

    async def watch(self, *, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for a change in the workspace (blocks this channel: give it one of its own)."""
        return await self.call("watch", {"timeout": timeout}, timeout=timeout + 30)

    async def scrub(self, *, budget_bytes: int, timeout: float = 3600.0) -> dict[str, Any]:
        """Re-read up to ``budget_bytes`` of the stored copies against their manifests; mend what is corrupt."""
        return await self.call("scrub", {"budget_bytes": budget_bytes}, timeout=timeout)

    async def refresh_candidate(self, *, timeout: float = 3600.0) -> dict[str, Any]:
        """Bring a stale promotion candidate up to the newest snapshot."""
        return await self.call("refresh_candidate", {}, timeout=timeout)

    async def retire_workspace(self, *, epoch: int) -> dict[str, Any]:
        """Move a former primary's live workspace aside as it becomes a standby."""
        return await self.call("retire_workspace", {"epoch": epoch})

    async def verify_promoted(self, manifest: Manifest, *, timeout: float = 600.0) -> bool:
        """Check the promoted workspace against ``manifest`` (stat-level; changed files are re-hashed)."""
        r = await self.call("verify_promoted", {"entries": manifest.to_wire()}, timeout=timeout)
        return bool(r["ok"])

    async def record_pass(self, *, epoch: int, seq: int, record: dict[str, Any]) -> dict[str, Any]:
        """Record a pass that found nothing to copy."""
        r = await self.call("record_pass", {"epoch": epoch, "seq": seq, "record": record})
        rec: dict[str, Any] = r["record"]
        return rec

    async def verify_snapshot(self, seq: int, *, timeout: float = 3600.0) -> list[str]:
        """Re-hash snapshot ``seq`` fully; return the problems found (empty when it matches its manifest)."""
        r = await self.call("verify", {"seq": seq}, timeout=timeout)
        problems: list[str] = r["problems"]
        return problems

    async def verify_tree(self, manifest: Manifest, root: str | None = None, *, timeout: float = 3600.0) -> list[str]:
        """Re-hash the workspace (or ``root``) fully against ``manifest``; return the problems found."""
        r = await self.call("verify", {"entries": manifest.to_wire(), "root": root}, timeout=timeout)
        problems: list[str] = r["problems"]
        return problems

    async def authorize_pair(self, *, pair: str, public_key: str, epoch: int) -> None:
        """Accept the pair key, for pushes into this epoch's staging area only."""
        await self.call("authorize_pair", {"pair": pair, "public_key": public_key, "epoch": epoch})

    async def revoke_pair(self, *, pair: str, everything: bool = False) -> dict[str, Any]:
        """Fence: drop the pair key and kill receives from older epochs (or all, with ``everything``)."""
        return await self.call("revoke_pair", {"pair": pair, "all": everything})

    async def install_pair_client(self, *, private_key: str, standby: SshTarget, standby_host_key: str) -> None:
        """Give this (primary) host the pair key and the standby's pinned address."""
        await self.call("install_pair_client", {"private_key": private_key, "host": standby.host,
                                                "port": standby.port, "user": standby.user,
                                                "standby_host_key": standby_host_key})

    async def push(self, paths: list[str], *, timeout: float, io_timeout: int, bwlimit: int | None = None,
                   compress: bool = False, streams: int = 1) -> RsyncRun:
        """Direct mode: rsync ``paths`` from this host's workspace into the standby's staging area (in
        ``streams`` parallel rsyncs, split by size)."""
        r = await self.call("push", _push_args(paths, timeout, io_timeout, bwlimit, compress=compress, streams=streams),
                            timeout=timeout + 30)
        return RsyncRun(int(r["returncode"]), r["stdout"], r["stderr"], float(r["seconds"]))

    async def push_following(self, paths: list[str], progress: Callable[[int], None], *, timeout: float,
                             io_timeout: int, bwlimit: int | None = None, compress: bool = False,
                             streams: int = 1, poll_seconds: float = 1.0) -> RsyncRun:
        """Like :meth:`push`, telling ``progress`` the bytes moved so far about every ``poll_seconds``."""
        args = _push_args(paths, timeout, io_timeout, bwlimit, compress=compress, streams=streams)
        started = await self.call("push_start", args)
        async with asyncio.timeout(timeout + 30):
            while True:
                r = await self.call("push_poll", {"id": started["id"], "wait": poll_seconds},
                                    timeout=poll_seconds + 60)
                progress(int(r.get("bytes") or 0))
                if r.get("done"):
                    return RsyncRun(int(r["returncode"]), r["stdout"], r["stderr"], float(r["seconds"]))

    async def install_host_certificate(self, certificate: str) -> None:
        """Make the host's sshd present ``certificate`` (of its own host key) beside its key."""
        await self.call("install_host_certificate", {"certificate": certificate})


def _installed_path(host: str, output: str) -> str:
    """The agent's path from the install script's framed line (a login banner around it is ignored)."""
    for line in output.splitlines():
        if line.startswith(PATH_MARK):
            return line[len(PATH_MARK):].strip()
    raise AgentError(f"installing the agent on {host} printed no path: {_shown(output.encode())}",
                     hint="check that the host can write its data directory, and what its login prints")


def _shown(raw: bytes) -> str:
    """Text a host printed, short and safe to put in a message."""
    text = raw.decode(errors="replace").strip().replace("\n", " | ")
    return repr(text[:200] + ("..." if len(text) > 200 else ""))


def _push_args(paths: list[str], timeout: float, io_timeout: int, bwlimit: int | None, *, compress: bool,
               streams: int) -> dict[str, Any]:
    return {"paths": paths, "timeout": timeout, "io_timeout": io_timeout, "bwlimit": bwlimit, "compress": compress,
            "streams": streams}
