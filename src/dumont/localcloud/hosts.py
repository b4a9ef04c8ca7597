"""The local cloud's machines: each one a real OpenSSH ``sshd`` on its own loopback address, port and tree.

A host's directory stands in for its disk::

    <root>/etc/sshd_config, ssh_host_ed25519_key(.pub)
    <root>/etc/authorized_keys        (plain ``machine`` hosts; image hosts use each user's ~/.ssh)
    <root>/workspace/                 what a real machine has at /workspace
    <root>/var/lib/dumont/            the Dumont agent's data (snapshots on a standby)
    <root>/run/sshd.pid, <root>/log/sshd.log

A host booted from an image (``images.py``: a Vast pytorch container, a GCP debian-12 VM) has what that image
has and lacks, its own login users, and runs its boot script (Vast onstart, GCP startup-script) as root at every
start. Sessions get ``DUMONT_WORKSPACE`` and friends through ``SetEnv``, so the agent finds this host's paths the
same way it finds ``/workspace`` on a real machine. Faults are real: kill freezes then SIGKILLs every process of
the host; partition SIGSTOPs them (connections hang, nothing dies); heal resumes them; an unreachable host (a
closed firewall) has only its sshd frozen, so nothing new gets in while the machine keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import getpass
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dumont.errors import LocalCloudError
from dumont.localcloud import images, procs
from dumont.localcloud.images import HostFiles, Image
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
    image: str = images.MACHINE_NAME
    address: str = "127.0.0.1"  # its own loopback address (all of 127.0.0.0/8 is this machine)
    login_users: list[str] = field(default_factory=list)  # image hosts: who may log in (besides a refused root)
    reachable: bool = True  # False: a firewall keeps every new connection out
    namespace: bool = False  # its sshd runs in a mount namespace of its own (set at each start)
    login_banner: str = ""  # what every login shell prints first, as a chatty ~/.bashrc does (its pool's setting)
    # A link in front of it (localcloud/link.py): ``port`` is then the link's, and sshd listens on ``sshd_port``.
    link: dict[str, Any] | None = None
    sshd_port: int = 0

    @property
    def listen_port(self) -> int:
        """Where its sshd itself listens."""
        return self.sshd_port if self.link is not None else self.port

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
    def tmux_dir(self) -> Path:
        """Where tmux keeps this host's sockets: short (a socket path must fit in 108 bytes), and its own."""
        name = f"dumont-tmux-{hashlib.sha256(self.mark.encode()).hexdigest()[:12]}"
        return Path("/tmp") / name  # noqa: S108 - created 0700 at each start, removed with the host

    @property
    def profile(self) -> Image:
        """The image the host was booted from."""
        return images.image_named(self.image)

    @property
    def files(self) -> HostFiles:
        """Where the host keeps what makes it its image."""
        return HostFiles(self.base)

    @property
    def authorized_keys(self) -> Path:
        """The keys this host's sshd accepts for its login user."""
        return self.authorized_keys_of(self.user)

    def authorized_keys_of(self, user: str) -> Path:
        """The keys sshd accepts for ``user`` (a plain host has one file for its one account)."""
        if self.profile.is_machine:
            return self.base / "etc" / "authorized_keys"
        return self.files.home(user) / ".ssh" / "authorized_keys"

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
        return SshTarget(alias or self.name, self.address, self.port, self.user)

    def processes(self) -> set[int]:
        """Every live process of this host."""
        return procs.host_processes(self.mark, [self.pid] if self.pid else [])

    def as_dict(self) -> dict[str, object]:
        """The record as JSON-ready data, with the paths a test or operator needs."""
        data: dict[str, object] = asdict(self)
        data["state"] = str(self.state)
        data.update(workspace=str(self.workspace), data_dir=str(self.data_dir), pids=sorted(self.processes()),
                    ssh_host=self.address, ssh_port=self.port)
        return data


def pick_port(address: str = "127.0.0.1") -> int:
    """A free TCP port on ``address`` (sshd may still lose a race for it; the caller retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def new_address() -> str:
    """A loopback address of its own for a host (a cloud instance's IP), never 127.0.0.1."""
    return f"127.{secrets.randbelow(239) + 16}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


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


def session_env(host: LocalHost) -> dict[str, str]:
    """What every session of the host has in its environment (and its boot script too)."""
    env = {
        "DUMONT_HOST": host.name,
        "DUMONT_WORKSPACE": str(host.workspace),
        "DUMONT_DATA_DIR": str(host.data_dir),
        "DUMONT_SSHD_HOST_KEY": str(host.host_key),
        "DUMONT_SSHD_PIDFILE": str(host.pidfile),
        "DUMONT_SSHD_CONFIG": str(host.base / "etc" / "sshd_config"),
        procs.MARK: host.mark,
    }
    if host.profile.is_machine:
        # Each machine has its own home: sessions must not run the real user's shell start-up files (they may
        # be slow, and a host killed mid-start-up could leave their locks behind for everyone else).
        env.update(HOME=str(host.base / "home"), DUMONT_AUTHORIZED_KEYS=str(host.authorized_keys),
                   DUMONT_PYTHON=host_python())
    else:
        # An image host finds its tools as a real instance does: on the PATH an SSH session gets, nothing more.
        files = host.files
        path = images.DEFAULT_PATH if host.namespace else f"{files.root}/usr/local/bin:{files.bin_dir}:/usr/sbin"
        env.update(PATH=path, TMUX_TMPDIR=str(host.tmux_dir))
    return env


def sshd_config(host: LocalHost) -> str:
    """The sshd_config of a local host."""
    lines = [
        f"Port {host.listen_port}",
        f"ListenAddress {host.address}",
        f'HostKey "{host.host_key}"',
        # Where a pair's host certificate goes (the agent's install_host_certificate); sshd starts without one.
        f'HostCertificate "{host.host_key}-cert.pub"',
        f'PidFile "{host.pidfile}"',
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The host's files live under a shared temporary tree; their own modes are ours to keep strict.
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding yes",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LoginGraceTime 30",
        "LogLevel INFO",
    ]
    if host.profile.is_machine:
        lines += [f'AuthorizedKeysFile "{host.authorized_keys}"', f"AllowUsers {host.user}",
                  "PermitRootLogin prohibit-password", "PermitUserRC no"]
    else:
        # Each user's own ~/.ssh/authorized_keys, as on a real machine; the users are the host's own (passwd).
        lines += ["AuthorizedKeysFile .ssh/authorized_keys", "PermitRootLogin prohibit-password"]
        if not host.profile.root_login:
            # Google's images refuse root over SSH (cloud.google.com/compute/docs/connect/root-ssh). Every name of
            # the host maps to the current uid here, so root is refused by name.
            lines.append("DenyUsers root")
    lines.append(_setenv(session_env(host)))
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


def create_files(root: Path, name: str, mark: str, authorized_keys: list[str], *, image: str = images.MACHINE_NAME,
                 login_users: dict[str, list[str]] | None = None, login_banner: str = "") -> LocalHost:
    """Lay out a new host's directory tree, host key and login users with their authorized keys."""
    check_alias(name)
    if root.exists():
        raise LocalCloudError(f"local host {name} already exists at {root}", hint="pick another name")
    profile = images.image_named(image)
    for sub in ("etc", "home", "workspace", "var/lib/dumont", "run", "log"):
        (root / sub).mkdir(parents=True, mode=0o755)
    host_key = root / "etc" / "ssh_host_ed25519_key"
    public = generate_keypair(host_key, f"dumont-local-{name}")
    host = LocalHost(name=name, root=str(root), port=0, user=getpass.getuser(), mark=mark, host_public_key=public,
                     image=image, login_banner=login_banner)
    if profile.is_machine:
        write_private(host.authorized_keys, "".join(k.strip() + "\n" for k in authorized_keys))
        images.write_shell_files(root / "home", profile, login_banner)
    else:
        images.nss_wrapper()  # fail now, with what to install, rather than at the first login
        host.address = new_address()
        images.lay_out(root)
        set_login_users(host, login_users if login_users is not None else
                        {profile.default_user or "root": list(authorized_keys)})
    save(host)
    return host


def set_login_users(host: LocalHost, users: dict[str, list[str]]) -> None:
    """Give an image host these login users, each with its keys (as a cloud's guest agent does from metadata)."""
    images.write_users(host.files, host.profile, users, host.login_banner)
    allowed = [u for u in users if u != "root" or host.profile.root_login]
    host.login_users = sorted(allowed)
    default = host.profile.default_user
    host.user = default if default in users else (host.login_users[0] if host.login_users else "root")


async def start_sshd(host: LocalHost, *, reuse_port: bool = True) -> subprocess.Popen[bytes]:
    """Start the host's sshd and wait (bounded) until it greets; pick another port if its port was taken."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    if not host.profile.is_machine:
        host.namespace = images.can_use_namespace()
        host.tmux_dir.mkdir(mode=0o700, exist_ok=True)
        images.populate_bin(host.files, host.profile, namespace=host.namespace)
    last_error = ""
    for attempt in range(5):
        if host.link is not None:
            if not (reuse_port and attempt == 0 and host.sshd_port):
                host.sshd_port = pick_port(host.address)  # behind its link, which keeps the public port
        elif not (reuse_port and attempt == 0 and host.port):
            host.port = pick_port(host.address)
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
        if not host.reachable:
            os.kill(proc.pid, signal.SIGSTOP)  # the firewall is closed: nothing new gets in
        save(host)
        return proc
    raise LocalCloudError(f"could not start sshd for {host.name}: {last_error}")


def _spawn(host: LocalHost) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), procs.MARK: host.mark, "LANG": "C.UTF-8"}
    config = host.base / "etc" / "sshd_config"
    argv = [sshd_binary(), "-D", "-e", "-f", str(config)]
    if not host.profile.is_machine:
        files = host.files
        env.update(LD_PRELOAD=images.nss_wrapper(), NSS_WRAPPER_PASSWD=str(files.passwd),
                   NSS_WRAPPER_GROUP=str(files.group))
        write_private(files.init, images.init_script(files, sshd=argv[0], sshd_config=config,
                                                     namespace=host.namespace, env=session_env(host)), mode=0o755)
        argv = ["unshare", "--mount", "--propagation", "private", str(files.init)] if host.namespace else [
            str(files.init)]
    with host.log.open("ab") as log:
        return subprocess.Popen(
            argv,
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
                reader, writer = await asyncio.open_connection(host.address, host.listen_port)
                try:
                    banner = await reader.readline()
                finally:
                    writer.close()
                if banner.startswith(b"SSH-2.0"):
                    return
        await asyncio.sleep(0.02)  # polling a local socket: the only signal sshd gives that it is ready
    raise LocalCloudError(f"sshd on port {host.listen_port} did not greet within {timeout:g} s: {_log_tail(host)}")


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
