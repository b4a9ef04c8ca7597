"""The pool of local hosts behind the local cloud: create, start, stop, kill, partition, heal, destroy, list.

The pool is the only owner of its hosts' processes. It is used in-process by tests and by the local cloud daemon
(which puts the Vast and GCP API emulators in front of it); the CLI reaches it through the daemon.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import zlib
from pathlib import Path

from dumont.errors import LocalCloudError, UsageError
from dumont.localcloud import hosts as hostlib
from dumont.localcloud import images, procs
from dumont.localcloud.hosts import HostState, LocalHost
from dumont.localcloud.link import LinkRelay, LinkSpec, spec_from_dict, spec_to_dict
from dumont.transport.keys import generate_keypair, write_private


class HostPool:
    """Every local host under ``<state_dir>/hosts``, and the sshd processes this pool started."""

    def __init__(self, state_dir: Path, cloud_id: str | None = None, *, login_banner: str | None = None,
                 link: LinkSpec | None = None) -> None:
        self.state_dir = state_dir
        # With a link, every new host sits behind a relay of its own (localcloud/link.py), set at run time.
        self.link = link
        self._relay: LinkRelay | None = None
        self._relay_ports: dict[str, int] = {}
        # What every new host's login shells print first (a chatty ~/.bashrc); default ``$DUMONT_LOCAL_LOGIN_BANNER``.
        self.login_banner = images.login_banner() if login_banner is None else login_banner
        self.hosts_dir = state_dir / "hosts"
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        id_file = state_dir / "cloud_id"
        if cloud_id is None:
            cloud_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
        id_file.write_text(cloud_id + "\n")
        self.cloud_id = cloud_id
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._hosts: dict[str, LocalHost] = {}
        for record in sorted(self.hosts_dir.glob("*/host.json")):
            host = hostlib.load(record)
            self._hosts[host.name] = host

    # ------------------------------------------------------------------ lookup

    def hosts(self) -> list[LocalHost]:
        """Every host, in name order."""
        return [self._hosts[n] for n in sorted(self._hosts)]

    def get(self, name_or_id: str) -> LocalHost:
        """A host by its name or by the instance id a provider API reported for it."""
        host = self._hosts.get(name_or_id)
        if host is None:
            host = next((h for h in self._hosts.values() if h.instance_id == name_or_id), None)
        if host is None:
            known = ", ".join(sorted(self._hosts)) or "none"
            raise UsageError(f"no local host {name_or_id!r}", hint=f"known hosts: {known}")
        return host

    # ------------------------------------------------------------------ lifecycle

    async def create(
        self,
        name: str,
        *,
        authorized_keys: list[str],
        role: str = "",
        provider: str = "local",
        instance_id: str | None = None,
        start: bool = True,
        image: str | None = None,
        login_users: dict[str, list[str]] | None = None,
        boot_script: str | None = None,
    ) -> LocalHost:
        """Create a host (its own directory, host key and login users) and start it.

        ``image`` names what the machine boots from (``images.IMAGES``; this machine as it is by default);
        ``login_users`` maps each login of an image host to its keys (default: the image's user with
        ``authorized_keys``); ``boot_script`` runs as root at every start (Vast onstart, GCP startup-script).
        """
        if name in self._hosts:
            raise LocalCloudError(f"local host {name} already exists", hint="pick another name")
        host = hostlib.create_files(self.hosts_dir / name, name, f"{self.cloud_id}/{name}", authorized_keys,
                                    image=image or images.MACHINE_NAME, login_users=login_users,
                                    login_banner=self.login_banner)
        host.role, host.provider, host.instance_id = role, provider, instance_id
        if self.link is not None:
            host.link = spec_to_dict(self.link)
        if boot_script is not None:
            self._write_boot_script(host, boot_script)
        hostlib.save(host)
        self._hosts[name] = host
        if start:
            await self.start(name)
        return host

    async def start(self, name: str, *, new_address: bool = False) -> LocalHost:
        """Start a stopped or killed host (its files are as they were); a running host is left alone.

        ``new_address``: it comes back on another address and port, as a cloud instance may after a restart.
        """
        host = self.get(name)
        if host.state == HostState.RUNNING and host.pid and procs.is_alive(host.pid):
            return host
        if host.state == HostState.PARTITIONED:
            raise LocalCloudError(f"{name} is partitioned, not stopped", hint=f"heal it: dumont local heal {name}")
        if new_address:
            if not host.profile.is_machine:
                host.address = hostlib.new_address()
            host.port = 0
        self._procs[name] = await hostlib.start_sshd(host)
        if host.link is not None:
            self._open_link(host)
        return host

    def _open_link(self, host: LocalHost) -> None:
        """Put the host's relay on its public port (another, if that one was taken)."""
        if self._relay is None:
            self._relay = LinkRelay(seed=zlib.crc32(self.cloud_id.encode()))  # a cloud's stalls replay alike
        spec = spec_from_dict(host.link or {})
        try:
            port = self._relay.add(host.address, host.sshd_port, spec, listen_host=host.address,
                                   listen_port=host.port)
        except OSError:
            port = self._relay.add(host.address, host.sshd_port, spec, listen_host=host.address)
        self._relay_ports[host.name] = port
        host.port = port
        hostlib.save(host)

    def _close_link(self, name: str) -> None:
        port = self._relay_ports.pop(name, None)
        if port is not None and self._relay is not None:
            self._relay.remove(port)  # every connection through it dies with the host

    def set_link(self, name: str, spec: LinkSpec) -> LocalHost:
        """Change what the link in front of a host does, at once (open connections included)."""
        host = self.get(name)
        if host.link is None:
            raise LocalCloudError(f"{name} was created without a link", hint="start the local cloud with a link "
                                  "(dumont local up --link lan) so its hosts can be given one at run time")
        host.link = spec_to_dict(spec)
        hostlib.save(host)
        port = self._relay_ports.get(name)
        if port is not None and self._relay is not None:
            self._relay.set(port, spec)
        return host

    async def stop(self, name: str) -> LocalHost:
        """Stop a host gracefully (SIGTERM, then SIGKILL after a grace period); its files stay."""
        return await self._down(name, graceful=True, state=HostState.STOPPED)

    async def kill(self, name: str) -> LocalHost:
        """Hard-stop a host: every process of it dies at once, as when the machine loses power."""
        return await self._down(name, graceful=False, state=HostState.KILLED)

    async def partition(self, name: str) -> LocalHost:
        """Make a host stop answering without dying: connections hang, nothing is lost."""
        host = self.get(name)
        if host.state != HostState.RUNNING:
            raise LocalCloudError(f"{name} is {host.state}, not running", hint="only a running host can be partitioned")
        procs.freeze(host.mark, [host.pid] if host.pid else [])
        host.state = HostState.PARTITIONED
        hostlib.save(host)
        return host

    async def heal(self, name: str) -> LocalHost:
        """Let a partitioned host answer again."""
        host = self.get(name)
        if host.state != HostState.PARTITIONED:
            raise LocalCloudError(f"{name} is {host.state}, not partitioned", hint="nothing to heal")
        procs.thaw(host.mark, [host.pid] if host.pid else [])
        if not host.reachable and host.pid:
            os.kill(host.pid, signal.SIGSTOP)  # healing the network does not open a closed firewall
        host.state = HostState.RUNNING
        hostlib.save(host)
        return host

    async def change_host_key(self, name: str) -> LocalHost:
        """From now on the host presents a new host key, as a reinstalled machine or a man in the middle would:
        its sshd restarts with a fresh key (and no certificate for it); sessions already open go on."""
        host = self.get(name)
        if host.state != HostState.RUNNING or not host.pid:
            raise LocalCloudError(f"{name} is {host.state}, not running", hint="only a running host can be re-keyed")
        key = host.host_key
        for old in (key, key.with_name(key.name + ".pub"), key.with_name(key.name + "-cert.pub")):
            old.unlink(missing_ok=True)
        host.host_public_key = generate_keypair(key, f"dumont-local-{name}-rekeyed")
        os.kill(host.pid, signal.SIGTERM)  # the listener only: its sessions are processes of their own
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait(timeout=10)
        self._procs[name] = await hostlib.start_sshd(host)
        return host

    async def set_reachable(self, name: str, reachable: bool) -> LocalHost:
        """Open or close the host's firewall: closed, its sshd answers no new connection (the host keeps running)."""
        host = self.get(name)
        if host.reachable == reachable:
            return host
        host.reachable = reachable
        if host.state == HostState.RUNNING and host.pid and procs.is_alive(host.pid):
            os.kill(host.pid, signal.SIGCONT if reachable else signal.SIGSTOP)
        hostlib.save(host)
        return host

    async def destroy(self, name: str, *, keep_files: bool = False) -> None:
        """Kill a host and forget it; its directory is removed unless ``keep_files``."""
        host = self.get(name)
        await self._down(name, graceful=False, state=HostState.KILLED)
        del self._hosts[name]
        if keep_files:
            (host.base / "host.json").rename(host.base / "host.json.destroyed")
        else:
            shutil.rmtree(host.base, ignore_errors=True)
        shutil.rmtree(host.tmux_dir, ignore_errors=True)

    async def shutdown(self) -> set[int]:
        """Kill every host's processes (files stay); return the pids that were still alive."""
        killed: set[int] = set()
        for host in self.hosts():
            shutil.rmtree(host.tmux_dir, ignore_errors=True)  # its sockets die with the host's processes
            if host.state != HostState.KILLED or host.processes():
                killed |= await hostlib.stop_processes(host, graceful=False)
                host.state, host.pid = HostState.KILLED, None
                hostlib.save(host)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        killed |= procs.kill_marked(self.cloud_id, self.hosts_dir)
        for name in list(self._relay_ports):
            self._close_link(name)
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        return killed

    def leftover_processes(self) -> set[int]:
        """Live processes that carry this cloud's mark (empty after a clean shutdown)."""
        return procs.marked_processes(self.cloud_id, self.hosts_dir)

    # ------------------------------------------------------------------ keys

    def authorize(self, name: str, public_key: str, user: str | None = None) -> None:
        """Let ``public_key`` log in to the host as ``user`` (its login user by default), as a provider does."""
        host = self.get(name)
        path = host.authorized_keys_of(user or host.user)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        current = path.read_text() if path.exists() else ""
        if public_key.strip() not in current.splitlines():
            write_private(path, current + public_key.strip() + "\n")

    def deauthorize(self, name: str, public_key: str, user: str | None = None) -> None:
        """Stop letting ``public_key`` log in as ``user`` (its login user by default)."""
        host = self.get(name)
        path = host.authorized_keys_of(user or host.user)
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line.strip() != public_key.strip()]
            write_private(path, "".join(f"{line}\n" for line in kept))

    def set_login_users(self, name: str, users: dict[str, list[str]]) -> LocalHost:
        """Replace an image host's login users and their keys (a guest agent applying new metadata), live."""
        host = self.get(name)
        if host.profile.is_machine:
            raise LocalCloudError(f"{name} is a plain host with one account", hint="create it with an image")
        hostlib.set_login_users(host, users)
        hostlib.save(host)
        return host

    def set_boot_script(self, name: str, script: str | None) -> None:
        """What the host runs as root at its next starts (None: nothing)."""
        host = self.get(name)
        if script is None:
            host.files.boot_script.unlink(missing_ok=True)
        else:
            self._write_boot_script(host, script)

    @staticmethod
    def _write_boot_script(host: LocalHost, script: str) -> None:
        if host.profile.is_machine:
            raise LocalCloudError(f"{host.name} is a plain host without a boot script", hint="create it with an image")
        write_private(host.files.boot_script, script if script.endswith("\n") else script + "\n", mode=0o700)

    async def _down(self, name: str, *, graceful: bool, state: HostState) -> LocalHost:
        host = self.get(name)
        self._close_link(name)
        await hostlib.stop_processes(host, graceful=graceful)
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # reap sshd so it does not linger as a zombie
        host.state, host.pid = state, None
        hostlib.save(host)
        return host
