"""The local cloud's machines: each one a real OpenSSH ``sshd`` on its own 127.0.0.1 port and directory tree.

A host's directory stands in for its disk::

    <root>/etc/sshd_config, ssh_host_ed25519_key(.pub), authorized_keys
    <root>/workspace/                 what a real machine has at /workspace
    <root>/var/lib/dumont/            the Dumont agent's data (snapshots on a standby)
    <root>/run/sshd.pid, <root>/log/sshd.log

Sessions get ``DUMONT_WORKSPACE`` and friends through ``SetEnv``, so the agent finds this host's paths the same
way it finds ``/workspace`` on a real machine. Faults are real: kill freezes then SIGKILLs every process of the
host; partition SIGSTOPs them (connections hang, nothing dies); heal resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dumont.errors import LocalCloudError
from dumont.localcloud import procs
from dumont.transport.keys import check_alias, generate_keypair, write_private
from dumont.transport.ssh import SshTarget

SSHD_START_TIMEOUT = 10.0
STOP_GRACE = 5.0


class HostState(enum.StrEnum):
    """Where a local host is in its life."""

    RUNNING = "running"
    STOPPED = "stopped"
    KILLED = "killed"
    PARTITIONED = "partitioned"


@dataclass
class LocalHost:
    """One local machine's record (persisted as ``<root>/host.json``)."""

    name: str
    root: str
    port: int
    user: str
    mark: str
    host_public_key: str
    state: HostState = HostState.STOPPED
    pid: int | None = None
    role: str = ""
    provider: str = "local"
    instance_id: str | None = None

    @property
    def base(self) -> Path:
        """The host's directory."""
        return Path(self.root)

    @property
    def workspace(self) -> Path:
        """The host's workspace (``/workspace`` on a real machine)."""
        return self.base / "workspace"

    @property
    def data_dir(self) -> Path:
        """Where the agent keeps its data on this host."""
        return self.base / "var" / "lib" / "dumont"

    @property
    def authorized_keys(self) -> Path:
        """The keys this host's sshd accepts."""
        return self.base / "etc" / "authorized_keys"

    @property
    def host_key(self) -> Path:
        """The private host key sshd presents."""
        return self.base / "etc" / "ssh_host_ed25519_key"

    @property
    def pidfile(self) -> Path:
        """sshd's pid file."""
        return self.base / "run" / "sshd.pid"

    @property
    def log(self) -> Path:
        """sshd's log."""
        return self.base / "log" / "sshd.log"

    def target(self, alias: str | None = None) -> SshTarget:
        """How to reach this host over SSH."""
        return SshTarget(alias or self.name, "127.0.0.1", self.port, self.user)

    def processes(self) -> set[int]:
        """Every live process of this host."""
        return procs.host_processes(self.mark, [self.pid] if self.pid else [])

    def as_dict(self) -> dict[str, object]:
        """The record as JSON-ready data, with the paths a test or operator needs."""
        data: dict[str, object] = asdict(self)
        data["state"] = str(self.state)
        data.update(workspace=str(self.workspace), data_dir=str(self.data_dir), pids=sorted(self.processes()),
                    ssh_host="127.0.0.1", ssh_port=self.port)
        return data


def pick_port() -> int:
    """A free TCP port on 127.0.0.1 (sshd may still lose a race for it; the caller retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sshd_binary() -> str:
    """Absolute path of sshd (it refuses to re-exec itself from a relative one)."""
    found = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if Path(p).exists()), None)
    if not found:
        raise LocalCloudError("sshd is not installed", hint="install openssh-server (make deps does it on Debian)")
    return str(Path(found).resolve())


def host_python() -> str:
    """The interpreter sessions run the agent with: the system's, so user shell setups cannot slow it down."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(candidate).exists():
            return candidate
    return sys.executable


def _setenv(values: dict[str, str]) -> str:
    for key, value in values.items():
        if '"' in value or "\n" in value:
            raise LocalCloudError(f"{key}={value!r} cannot be passed to sshd", hint="use a path without quotes")
    return "SetEnv " + " ".join(f'"{k}={v}"' for k, v in values.items())


def sshd_config(host: LocalHost) -> str:
    """The sshd_config of a local host."""
    env = {
        # Each machine has its own home: sessions must not run the real user's shell start-up files (they may
        # be slow, and a host killed mid-start-up could leave their locks behind for everyone else).
        "HOME": str(host.base / "home"),
        "DUMONT_HOST": host.name,
        "DUMONT_WORKSPACE": str(host.workspace),
        "DUMONT_DATA_DIR": str(host.data_dir),
        "DUMONT_AUTHORIZED_KEYS": str(host.authorized_keys),
        "DUMONT_SSHD_HOST_KEY": str(host.host_key),
        "DUMONT_SSHD_PIDFILE": str(host.pidfile),
        "DUMONT_PYTHON": host_python(),
        procs.MARK: host.mark,
    }
    lines = [
        f"Port {host.port}",
        "ListenAddress 127.0.0.1",
        f'HostKey "{host.host_key}"',
        f'AuthorizedKeysFile "{host.authorized_keys}"',
        f'PidFile "{host.pidfile}"',
        f"AllowUsers {host.user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The host's files live under a shared temporary tree; their own modes are ours to keep strict.
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "PermitUserRC no",
        "X11Forwarding no",
        "AllowTcpForwarding yes",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LoginGraceTime 30",
        "LogLevel INFO",
        _setenv(env),
    ]
    return "\n".join(lines) + "\n"


def save(host: LocalHost) -> None:
    """Persist a host record atomically."""
    data = asdict(host)
    data["state"] = str(host.state)
    write_private(host.base / "host.json", json.dumps(data, indent=2) + "\n", mode=0o644)


def load(path: Path) -> LocalHost:
    """Read a host record."""
    data = json.loads(path.read_text())
    data["state"] = HostState(data["state"])
    return LocalHost(**data)


def create_files(root: Path, name: str, mark: str, authorized_keys: list[str]) -> LocalHost:
    """Lay out a new host's directory tree, host key and authorized keys."""
    check_alias(name)
    if root.exists():
        raise LocalCloudError(f"local host {name} already exists at {root}", hint="pick another name")
    for sub in ("etc", "home", "workspace", "var/lib/dumont", "run", "log"):
        (root / sub).mkdir(parents=True, mode=0o755)
    host_key = root / "etc" / "ssh_host_ed25519_key"
    public = generate_keypair(host_key, f"dumont-local-{name}")
    host = LocalHost(name=name, root=str(root), port=0, user=getpass.getuser(), mark=mark, host_public_key=public)
    write_private(host.authorized_keys, "".join(k.strip() + "\n" for k in authorized_keys))
    save(host)
    return host


async def start_sshd(host: LocalHost, *, reuse_port: bool = True) -> subprocess.Popen[bytes]:
    """Start the host's sshd and wait (bounded) until it greets; pick another port if its port was taken."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    last_error = ""
    for attempt in range(5):
        if not (reuse_port and attempt == 0 and host.port):
            host.port = pick_port()
        (host.base / "etc" / "sshd_config").write_text(sshd_config(host))
        proc = _spawn(host)
        try:
            await wait_for_banner(host, proc, SSHD_START_TIMEOUT)
        except LocalCloudError as exc:
            last_error = str(exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
            if "Address already in use" in last_error:
                continue
            raise
        host.pid = proc.pid
        host.state = HostState.RUNNING
        save(host)
        return proc
    raise LocalCloudError(f"could not start sshd for {host.name}: {last_error}")


def _spawn(host: LocalHost) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), procs.MARK: host.mark, "LANG": "C.UTF-8"}
    with host.log.open("ab") as log:
        return subprocess.Popen(
            [sshd_binary(), "-D", "-e", "-f", str(host.base / "etc" / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # a Ctrl-C meant for the CLI must not reach the host
        )


async def wait_for_banner(host: LocalHost, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the host's sshd sends its SSH banner; fail with its log when it exits or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise LocalCloudError(f"sshd exited with {proc.returncode}: {_log_tail(host)}")
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
                try:
                    banner = await reader.readline()
                finally:
                    writer.close()
                if banner.startswith(b"SSH-2.0"):
                    return
        await asyncio.sleep(0.02)  # polling a local socket: the only signal sshd gives that it is ready
    raise LocalCloudError(f"sshd on port {host.port} did not greet within {timeout:g} s: {_log_tail(host)}")


def _log_tail(host: LocalHost) -> str:
    try:
        lines = host.log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return " | ".join(lines[-3:]) or "no log"


async def stop_processes(host: LocalHost, *, graceful: bool) -> set[int]:
    """Stop every process of the host: SIGTERM then SIGKILL after a grace period, or SIGKILL at once."""
    roots = [host.pid] if host.pid else []
    if not graceful:
        return procs.kill_host(host.mark, roots)
    pids = procs.host_processes(host.mark, roots)
    procs.signal_all(pids, signal.SIGCONT)  # a partitioned host must be able to act on SIGTERM
    procs.signal_all(pids, signal.SIGTERM)
    await procs.wait_for_exits(pids, STOP_GRACE)
    return pids | procs.kill_host(host.mark, roots)
