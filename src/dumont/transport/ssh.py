"""How Dumont reaches hosts: the OpenSSH client, which is also rsync's transport.

One ``SshTransport`` owns an ssh_config file of its own that names every host by alias, pins each host key under
that alias (``StrictHostKeyChecking yes``; never ``no``), and shares one multiplexed connection per host
(``ControlMaster``), so a replication pass does not pay a fresh handshake for every command. Every call has a
deadline: when it passes, the client process is killed and :class:`CommandTimeout` is raised.

The shared connection is opened on its own (``ssh -M -N -f``) before the first command, never by a command that
happens to come first: a command that becomes the master with ``ControlPersist`` does not pass the end of its
standard input on, so a remote ``cat`` would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dumont.errors import (
    AuthRefused,
    CommandTimeout,
    HostKeyMismatch,
    HostUnreachable,
    RemoteCommandFailed,
    TransportError,
)
from dumont.transport.keys import KnownHosts, check_alias

SSH_FAILED = 255


@dataclass(frozen=True)
class SshTarget:
    """One host as SSH sees it; ``alias`` is the stable name its host key is pinned under."""

    alias: str
    host: str
    port: int
    user: str

    def __post_init__(self) -> None:
        check_alias(self.alias)


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command returned."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """Standard output decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout.decode(errors="replace")


def quote_remote(argv: Sequence[str]) -> str:
    """Quote ``argv`` for the remote shell that sshd runs the command with."""
    return " ".join(shlex.quote(arg) for arg in argv)


def _quote_config(value: str) -> str:
    if any(c in value for c in '"\n'):
        raise TransportError(f"path {value!r} cannot be written into an ssh_config", hint="use a path without quotes")
    return f'"{value}"'


def classify_ssh_failure(alias: str, stderr: str) -> TransportError:
    """Translate the ssh client's stderr (exit 255) into the matching error."""
    text = stderr.strip()
    lowered = text.lower()
    if "host key verification failed" in lowered or "remote host identification has changed" in lowered:
        return HostKeyMismatch(
            f"{alias} presented a host key other than the one pinned for it",
            hint="if the host was really replaced, re-pin its key; otherwise treat it as an impostor",
        )
    if "permission denied" in lowered:
        return AuthRefused(
            f"{alias} refused our SSH key: {text}",
            hint="the key was revoked or never installed on that host; check the provider's key settings",
        )
    unreachable = ("connection refused", "timed out", "no route to host", "connection closed", "reset by peer")
    if any(word in lowered for word in unreachable):
        return HostUnreachable(f"{alias} is unreachable: {text}", hint="retry later or check that the host is up")
    return HostUnreachable(f"ssh to {alias} failed: {text or 'no message'}", hint="retry later")


class SshTransport:
    """Runs commands on hosts through OpenSSH with pinned host keys, multiplexing and deadlines."""

    def __init__(
        self,
        *,
        identity: Path,
        known_hosts: KnownHosts,
        connect_timeout: float = 5.0,
        multiplex: bool = True,
        control_persist: int = 30,
    ) -> None:
        self.identity = identity
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.multiplex = multiplex
        self.control_persist = control_persist
        # Unix socket paths are limited to 108 bytes, so the control sockets live in a short private directory.
        self._runtime = Path(tempfile.mkdtemp(prefix="dumont-ssh-"))
        self.config_path = self._runtime / "ssh_config"
        self._targets: dict[str, SshTarget] = {}
        self._used: set[tuple[str, str]] = set()  # (alias, user) of every shared connection opened
        self._master_locks: dict[str, asyncio.Lock] = {}
        self._write_config()

    def add(self, target: SshTarget) -> None:
        """Make ``target`` reachable by its alias (replacing an older address under the same alias)."""
        if self._targets.get(target.alias) == target:
            return
        self._targets[target.alias] = target
        self._write_config()

    def ssh_argv(self, target: SshTarget, remote: Sequence[str] | None = None, *, tty: bool = False) -> list[str]:
        """Return the full local argv that runs ``remote`` (already split) on ``target``."""
        self.add(target)
        argv = ["ssh", "-F", str(self.config_path), "-tt" if tty else "-T", target.alias]
        if remote:
            argv += ["--", quote_remote(remote)]
        return argv

    def rsync_shell(self) -> str:
        """The value for ``rsync -e``: our ssh with our config (hosts are then named by alias)."""
        return f"ssh -F '{self.config_path}' -T"

    async def run(
        self,
        target: SshTarget,
        remote: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float,
        check: bool = True,
    ) -> CommandResult:
        """Run ``remote`` on ``target`` and wait for it, at most ``timeout`` seconds.

        :raises CommandTimeout: the deadline passed (the client was killed).
        :raises HostUnreachable, HostKeyMismatch, AuthRefused: SSH itself failed.
        :raises RemoteCommandFailed: the command exited non-zero and ``check`` is true.
        """
        try:  # waiting for another call that is opening the shared connection counts against the deadline too
            async with asyncio.timeout(timeout):
                await self.prepare(target, timeout=timeout)
        except TimeoutError:
            raise CommandTimeout(f"the connection to {target.alias} for {remote[0]} was not open within "
                                 f"{timeout:g} s", hint="retry; the host may be down or cut off") from None
        argv = self.ssh_argv(target, remote)
        result = await run_local(argv, input=input, timeout=timeout, what=f"{remote[0]} on {target.alias}")
        if result.returncode == SSH_FAILED:
            raise classify_ssh_failure(target.alias, result.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise RemoteCommandFailed(
                f"{remote[0]} on {target.alias} exited {result.returncode}: {stderr[-400:] or 'no message'}",
                returncode=result.returncode,
                stderr=stderr,
            )
        return result

    async def start(self, target: SshTarget, remote: Sequence[str]) -> asyncio.subprocess.Process:
        """Start ``remote`` on ``target`` with stdin and stdout as pipes (for long-lived channels)."""
        await self.prepare(target, timeout=self.connect_timeout + 10)
        argv = self.ssh_argv(target, remote)
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 30,  # one answer per line: a million-file manifest is about 100 MB
        )

    async def prepare(self, target: SshTarget, *, timeout: float) -> None:
        """Open the shared connection to ``target`` if it is not open yet (rsync callers use this first).

        :raises HostUnreachable, HostKeyMismatch, AuthRefused: the connection could not be made.
        :raises CommandTimeout: it was not made within ``timeout``.
        """
        self.add(target)
        if not self.multiplex:
            return
        lock = self._master_locks.setdefault(f"{target.alias}@{target.user}", asyncio.Lock())
        async with lock:
            if (self._runtime / f"{target.alias}@{target.user}").exists():
                return
            log_path = self._runtime / f"{target.alias}.log"
            # ControlMaster=yes alone: adding -M counts twice and makes the master "ask", which refuses the
            # `-O exit` that close() sends, so masters outlived a stopped controller (hostile-review.md #19).
            argv = ["ssh", "-F", str(self.config_path), "-o", "ControlMaster=yes", "-N", "-f", target.alias]
            with log_path.open("wb") as log:
                # -f forks the master into the background once it is authenticated; its inherited output must not
                # be one of our pipes, or we would wait for it to end.
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log
                )
                try:
                    async with asyncio.timeout(timeout):
                        returncode = await proc.wait()
                except (TimeoutError, asyncio.CancelledError):
                    await kill_and_reap(proc)
                    raise
            if returncode != 0:
                raise classify_ssh_failure(target.alias, log_path.read_text(errors="replace"))
            self._used.add((target.alias, target.user))

    async def check_reachable(self, target: SshTarget, *, timeout: float) -> None:
        """Do one SSH round trip to ``target`` with a fresh connection (no multiplexing) within ``timeout``."""
        self.add(target)
        argv = ["ssh", "-F", str(self.config_path), "-T", "-o", "ControlMaster=no", "-o", "ControlPath=none"]
        argv += [target.alias, "--", "true"]
        result = await run_local(argv, timeout=timeout, what=f"ssh round trip to {target.alias}")
        if result.returncode != 0:
            raise classify_ssh_failure(target.alias, result.stderr.decode(errors="replace"))

    async def forget_connection(self, target: SshTarget) -> None:
        """Close the shared connection to ``target`` (after its host key or address changed)."""
        if not self.multiplex:
            return
        await self._exit_master(target.alias, target.user)

    async def _exit_master(self, alias: str, user: str) -> None:
        argv = ["ssh", "-F", str(self.config_path), "-O", "exit", "-l", user, alias]
        with contextlib.suppress(TransportError):
            await run_local(argv, timeout=5, what=f"closing the connection to {alias}")
        self._used.discard((alias, user))

    async def close(self) -> None:
        """Close every shared connection and remove the runtime directory."""
        for alias, user in sorted(self._used):
            if alias in self._targets:
                await self._exit_master(alias, user)
        shutil.rmtree(self._runtime, ignore_errors=True)

    def _write_config(self) -> None:
        lines: list[str] = []
        for t in self._targets.values():
            lines += [
                f"Host {t.alias}",
                f"  HostName {t.host}",
                f"  Port {t.port}",
                f"  User {t.user}",
                f"  HostKeyAlias {t.alias}",
            ]
        lines += ["Host *", *self._common_options()]
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def _common_options(self) -> list[str]:
        options = {
            "IdentityFile": _quote_config(str(self.identity)),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": _quote_config(str(self.known_hosts.path)),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "HostKeyAlgorithms": "ssh-ed25519",
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "BatchMode": "yes",
            "ConnectTimeout": str(max(1, round(self.connect_timeout))),
            "ServerAliveInterval": "2",
            "ServerAliveCountMax": "3",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "ClearAllForwardings": "yes",
            "LogLevel": "ERROR",
        }
        if self.multiplex:
            # Commands attach to the master ``prepare`` opened, or connect on their own if it is gone.
            options["ControlMaster"] = "no"
            # One shared connection per alias *and* login: a master opened as one user must never carry another's
            # commands (a VM reached as its metadata user, then as root, which Google's image refuses).
            options["ControlPath"] = _quote_config(str(self._runtime / "%n@%r"))
            options["ControlPersist"] = str(self.control_persist)
        return [f"  {k} {v}" for k, v in options.items()]


async def run_local(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run a local program and wait for it at most ``timeout`` seconds; kill it when the deadline passes."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(input)
    except TimeoutError:
        await kill_and_reap(proc)
        raise CommandTimeout(f"{what} did not finish within {timeout:g} s", hint="it was stopped; retry") from None
    except asyncio.CancelledError:
        await kill_and_reap(proc)
        raise
    assert proc.returncode is not None
    return CommandResult(proc.returncode, stdout, stderr)


_reaping: set[asyncio.Task[None]] = set()  # killed clients whose pipes are still held open elsewhere


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` and reap it in the background, so that no deadline waits past the kill. A client of a shared
    connection has handed its pipes to the master process, and asyncio's ``wait`` returns only once they close:
    when the master gives that session up, seconds later on a host that stopped answering (waiting for it here, a
    probe of a frozen GPU took its 0.8 s timeout plus 5 s, and the gpu-partition drill detected the freeze in 8.4 s;
    reaped in the background, 3.36 s)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    reaping = asyncio.ensure_future(_reap(proc))
    _reaping.add(reaping)
    reaping.add_done_callback(_reaping.discard)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 120)
