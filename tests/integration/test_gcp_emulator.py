"""Given the local cloud's Compute emulator, Google's own client and our provider run a real spot VM on it.

Every test here runs under a loopback guard: any connection or name lookup in this process that would leave
127.0.0.0/8 fails at once, and the test fails if one was even attempted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from dumont.config import GcpConfig
from dumont.errors import AuthRefused
from dumont.localcloud.daemon import LocalCloud
from dumont.localcloud.emulators import gcp
from dumont.localcloud.hosts import HostState
from dumont.providers.base import (
    InstanceNotFound,
    InstanceState,
    ProviderRequestError,
    ProviderUnavailable,
    StandbySpec,
)
from dumont.providers.gcp import GcpStandbyCloud
from dumont.providers.gcp.provider import standby_resource
from dumont.transport.keys import KnownHosts, generate_keypair
from dumont.transport.ssh import SshTarget, SshTransport
from tests.conftest import eventually

T = TypeVar("T")
C = TypeVar("C")
PROJECT, ZONE = "dumont-local", "local-a"


class NonLoopbackConnection(ConnectionRefusedError):
    """Raised by the guard instead of letting a connection leave 127.0.0.0/8."""


def _is_loopback_v4(host: object) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    parts = text.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


class LoopbackGuard:
    """While active, fail every socket connect and name lookup in this process that is not for 127.0.0.0/8."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def __enter__(self) -> LoopbackGuard:
        self._saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
        connect, connect_ex, getaddrinfo = self._saved
        guard = self

        def checked_connect(sock: socket.socket, address: Any) -> None:
            guard.check(sock.family, address)
            connect(sock, address)

        def checked_connect_ex(sock: socket.socket, address: Any) -> int:
            guard.check(sock.family, address)
            return connect_ex(sock, address)

        def checked_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None:  # None asks for a local (listening) address
                guard.check(socket.AF_INET, (host, port))
            return getaddrinfo(host, port, *args, **kwargs)

        socket.socket.connect = checked_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = checked_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = checked_getaddrinfo
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = self._saved  # type: ignore[method-assign]

    def check(self, family: int, address: Any) -> None:
        """Raise (and remember) unless ``address`` is a Unix socket or on 127.0.0.0/8."""
        if family == getattr(socket, "AF_UNIX", None) or _is_loopback_v4(address[0]):
            return
        self.attempts.append(f"{address[0]}:{address[1]}")
        raise NonLoopbackConnection(f"blocked a connection to {address[0]}:{address[1]} (tests stay on 127.0.0.1)")


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[LoopbackGuard]:
    """Every test of this module: nothing in this process may reach beyond 127.0.0.0/8."""
    with LoopbackGuard() as guard:
        yield guard
    assert guard.attempts == [], f"a test tried to leave 127.0.0.1: {guard.attempts}"


@dataclass
class GcpLocal:
    """A local cloud with only its GCP emulator, Google's clients on it, and SSH that trusts our key."""

    cloud: LocalCloud
    emulator: gcp.GcpEmulator
    url: str
    instances: compute_v1.InstancesClient
    operations: compute_v1.ZoneOperationsClient
    provider: GcpStandbyCloud
    transport: SshTransport
    known_hosts: KnownHosts
    public_key: str

    def spec(self, name: str, **changes: Any) -> StandbySpec:
        """A standby spec as the controller writes it: our key for the default user (root), our pair's label."""
        fields: dict[str, Any] = {"name": name, "ssh_public_keys": [self.public_key],
                                  "labels": {"dumont-pair": "train"}}
        return StandbySpec(**{**fields, **changes})

    def client(self, kind: type[C]) -> C:
        """Another of Google's Compute clients, built the ordinary way against the emulator."""
        return kind(credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url},  # type: ignore[call-arg]
                    transport="rest")

    async def library(self, method: Callable[..., T], /, **kwargs: Any) -> T:
        """Call Google's synchronous client off the loop (the emulator serves on this same loop)."""
        return await asyncio.to_thread(method, project=PROJECT, zone=ZONE, **kwargs)

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call one of the emulator's own routes (``/_dumont/...``) over HTTP; return the status and JSON."""
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, json=body) as response:
            return response.status, await response.json()

    async def running_operation(self, kind: str) -> compute_v1.Operation:
        """The RUNNING operation of ``kind`` once the emulator has begun it, found with Google's client."""
        request = compute_v1.ListZoneOperationsRequest(project=PROJECT, zone=ZONE,
                                                       filter=f'operationType="{kind}" AND status="RUNNING"')
        found: list[compute_v1.Operation] = []

        async def listed() -> None:
            found[:] = await asyncio.to_thread(lambda: list(self.operations.list(request=request)))
            assert found, f"no RUNNING {kind} operation yet"

        await eventually(listed, timeout=10, retry_on=(AssertionError,))
        return found[0]

    async def preempted_operations(self, name: str) -> list[compute_v1.Operation]:
        """The zone's compute.instances.preempted operations for VM ``name``, listed by Google's client."""
        request = compute_v1.ListZoneOperationsRequest(
            project=PROJECT, zone=ZONE,
            filter=f'operationType="compute.instances.preempted" AND targetLink:instances/{name}')
        return await asyncio.to_thread(lambda: list(self.operations.list(request=request)))


@pytest.fixture
async def gcp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GcpLocal]:
    """The emulator with operations DONE at once, started through ``gcp.create`` as the daemon does."""
    monkeypatch.setenv(gcp.DELAY_ENV, "0")
    monkeypatch.setenv(gcp.NOTICE_ENV, "0")
    root = tmp_path / "gcp cloud"
    root.mkdir()
    cloud = LocalCloud(root / "state")
    emulator = gcp.create(cloud)
    url = await emulator.start()
    options = {"api_endpoint": url}
    provider = await GcpStandbyCloud.connect(GcpConfig(project=PROJECT, zone=ZONE,
                                                       credentials_file=root / "state" / "gcp_credentials.json"))
    known = KnownHosts(root / "known_hosts")
    transport = SshTransport(identity=root / "user_key", known_hosts=known)
    local = GcpLocal(cloud, emulator, url,
                     compute_v1.InstancesClient(credentials=AnonymousCredentials(), client_options=options,
                                                transport="rest"),
                     compute_v1.ZoneOperationsClient(credentials=AnonymousCredentials(), client_options=options,
                                                     transport="rest"),
                     provider, transport, known, generate_keypair(root / "user_key", "dumont-gcp-test"))
    try:
        yield local
    finally:
        await provider.close()
        await transport.close()
        await emulator.stop()
        await cloud.pool.shutdown()
        leftovers = cloud.pool.leftover_processes()
        assert not leftovers, f"processes of the local cloud survived teardown: {sorted(leftovers)}"


async def _ssh_run(local: GcpLocal, host: str, port: int, user: str, host_keys: list[str], command: str) -> str:
    """Run ``command`` on a VM over real SSH, its host key pinned first."""
    alias = f"vm-{port}"
    for key in host_keys:
        local.known_hosts.pin(alias, key, keep_existing=True)
    result = await local.transport.run(SshTarget(alias, host, port, user), ["sh", "-c", command], timeout=20)
    return result.text


# --------------------------------------------------------------------------- the guard itself

async def test_the_guard_fails_any_attempt_to_leave_loopback() -> None:
    """Given the guard, when code connects to a TEST-NET address or looks up Google, then it fails first."""
    with LoopbackGuard() as guard:
        with pytest.raises(NonLoopbackConnection):
            socket.create_connection(("192.0.2.1", 9), timeout=1)
        with pytest.raises(NonLoopbackConnection), socket.socket() as sock:
            sock.connect(("192.0.2.1", 80))
        with pytest.raises(NonLoopbackConnection):
            socket.getaddrinfo("compute.googleapis.com", 443)
        with pytest.raises(OSError, match=r"blocked a connection to 192\.0\.2\.1:22"):
            await asyncio.open_connection("192.0.2.1", 22)
        with pytest.raises(requests.ConnectionError):  # from another thread too: the guard is process-wide
            await asyncio.to_thread(requests.get, "https://compute.googleapis.com/compute/v1/projects/p", timeout=1)
    assert guard.attempts == ["192.0.2.1:9", "192.0.2.1:80", "compute.googleapis.com:443", "192.0.2.1:22",
                              "compute.googleapis.com:443"]


# --------------------------------------------------------------------------- Google's own client

async def test_googles_client_runs_a_spot_vm_reachable_only_through_a_firewall_rule_as_its_metadata_user(
        gcp_local: GcpLocal) -> None:
    """Given Google's InstancesClient on the emulator, when it inserts a tagged spot VM, then SSH gets no answer
    until a firewall rule opens tcp:22 to the tag; then the metadata user (never root) logs in on the VM's own
    external IP; a stop releases that IP, a start brings the VM back on another one, with its disk."""
    local = gcp_local
    resource = standby_resource(local.spec("standby-1"), ZONE)
    insert = await local.library(local.instances.insert, instance_resource=resource)
    await asyncio.to_thread(insert.result, timeout=10)  # DONE at once: the library never polls (§2.4)

    vm = await local.library(local.instances.get, instance="standby-1")
    assert (vm.status, vm.scheduling.provisioning_model, vm.scheduling.instance_termination_action) == (
        "RUNNING", "SPOT", "STOP")
    assert (list(vm.tags.items), vm.labels["dumont-pair"]) == (["dumont-standby"], "train")
    address = vm.network_interfaces[0].access_configs[0].nat_i_p
    host = local.cloud.pool.get("gcp-standby-1")
    assert address == host.address != "127.0.0.1"  # each VM has an address of its own on 127.0.0.0/8
    port = int(next(i.value for i in vm.metadata.items if i.key == "dumont-ssh-port"))
    assert (host.provider, host.instance_id, host.role, host.port, host.image) == (
        "gcp", "standby-1", "cpu", port, "debian-12")
    with pytest.raises(TimeoutError):  # unkind first: a new project has no rule opening port 22
        await _banner(address, port, within=0.5)

    await _open_ssh(local)
    text = await _ssh_run(local, address, port, "dumont", [host.host_public_key],
                          'echo kept > "$DUMONT_WORKSPACE/file" && echo "$USER"')
    assert text == "dumont\n"
    local.cloud.pool.authorize(host.name, local.public_key, user="root")  # even with a key for root ...
    with pytest.raises(AuthRefused):  # ... Google's image refuses root over SSH
        await _ssh_run(local, address, port, "root", [host.host_public_key], "true")

    stop = await local.library(local.instances.stop, instance="standby-1")
    await asyncio.to_thread(stop.result, timeout=10)
    vm = await local.library(local.instances.get, instance="standby-1")
    assert vm.status == "TERMINATED"
    assert not vm.network_interfaces[0].access_configs[0].nat_i_p  # a stopped VM releases its ephemeral IP
    assert vm.last_stop_timestamp
    assert local.cloud.pool.get("gcp-standby-1").state == HostState.STOPPED

    start = await local.library(local.instances.start, instance="standby-1")
    await asyncio.to_thread(start.result, timeout=10)
    vm = await local.library(local.instances.get, instance="standby-1")
    assert vm.status == "RUNNING"
    again = vm.network_interfaces[0].access_configs[0].nat_i_p
    assert again == local.cloud.pool.get("gcp-standby-1").address != address  # another ephemeral IP
    port = int(next(i.value for i in vm.metadata.items if i.key == "dumont-ssh-port"))
    assert await _ssh_run(local, again, port, "dumont", [host.host_public_key],
                          'cat "$DUMONT_WORKSPACE/file"') == "kept\n"

    delete = await local.library(local.instances.delete, instance="standby-1")
    await asyncio.to_thread(delete.result, timeout=10)
    with pytest.raises(gexc.NotFound, match="standby-1"):
        await local.library(local.instances.get, instance="standby-1")
    assert all(h.name != "gcp-standby-1" for h in local.cloud.pool.hosts())


async def test_googles_client_gets_every_result_from_the_emulator_while_operations_take_time(
        gcp_local: GcpLocal) -> None:
    """Given operations that take a while, when Google's client inserts, stops, starts and deletes a VM the
    ordinary way (``.result()``), then each result comes from the emulator alone (the guard sees nothing else),
    and meanwhile the VM shows its transition and the operation is RUNNING to get, list and wait."""
    local = gcp_local
    local.emulator.delay = 0.3
    resource = standby_resource(local.spec("slow"), ZONE)
    insert = asyncio.create_task(local.library(local.instances.insert, instance_resource=resource))
    running = await local.running_operation("insert")
    assert (await local.library(local.instances.get, instance="slow")).status in ("PROVISIONING", "STAGING")
    assert (await local.library(local.operations.get, operation=running.name)).status == \
        compute_v1.Operation.Status.RUNNING
    waited = await local.library(local.operations.wait, operation=running.name)
    assert (waited.status, waited.operation_type, waited.target_link.rsplit("/", 1)[-1]) == (
        compute_v1.Operation.Status.DONE, "insert", "slow")
    assert waited.self_link.startswith(local.url)  # links point back at the emulator, never at Google
    await asyncio.to_thread((await insert).result, timeout=10)

    for verb, status in (("stop", "TERMINATED"), ("start", "RUNNING")):
        operation = await local.library(getattr(local.instances, verb), instance="slow")
        assert operation.status == compute_v1.Operation.Status.DONE  # so result() will not poll
        await asyncio.to_thread(operation.result, timeout=10)
        assert (await local.library(local.instances.get, instance="slow")).status == status
    delete = await local.library(local.instances.delete, instance="slow")
    await asyncio.to_thread(delete.result, timeout=10)
    with pytest.raises(gexc.NotFound):
        await local.library(local.instances.get, instance="slow")


async def test_an_operation_answered_early_sends_googles_poller_to_google_and_our_provider_waits(
        gcp_local: GcpLocal) -> None:
    """Given the ``pending`` fault (GCE's own habit of answering before the work is done), then the library's
    ExtendedOperation polls compute.googleapis.com (cloud-apis.md §2.4, caught by the guard), while our provider
    waits for each operation on the emulator and sees its outcome."""
    local = gcp_local
    local.emulator.delay = 0.2
    assert await local.control("POST", "/_dumont/faults/pending", {"next": 1}) == (200, {
        "nossh_next": 0, "pending_next": 1})
    insert = await local.library(local.instances.insert, instance_resource=standby_resource(local.spec("early"), ZONE))
    assert insert.status == compute_v1.Operation.Status.RUNNING  # (done() itself would poll Google)
    with LoopbackGuard() as inner, pytest.raises(requests.ConnectionError):
        await asyncio.to_thread(insert.result, timeout=10)
    assert inner.attempts == ["compute.googleapis.com:443"]
    await local.library(local.operations.wait, operation=insert.name)

    assert (await local.control("POST", "/_dumont/faults/pending", {"next": 3}))[0] == 200
    await local.provider.stop("early")
    assert (await local.provider.get("early")).raw_state == "TERMINATED"
    await local.provider.start("early")
    assert (await local.provider.get("early")).state is InstanceState.RUNNING
    await local.provider.delete("early")
    assert (await local.provider.get("early")).state is InstanceState.TERMINATED
    assert await local.control("GET", "/_dumont/faults") == (200, {"nossh_next": 0, "pending_next": 0})


async def test_wait_answers_when_done_or_at_its_own_limit(gcp_local: GcpLocal) -> None:
    """Given an operation still at work, then operations.wait returns it RUNNING at its own bound, the VM shows
    STOPPING meanwhile, and a later wait returns it DONE; an unknown operation is NotFound."""
    local = gcp_local
    await local.provider.create_standby(local.spec("waited"))
    local.emulator.delay, local.emulator.wait_limit = 0.5, 0.05
    await local.control("POST", "/_dumont/faults/pending", {"next": 1})
    stop = await local.library(local.instances.stop_unary, instance="waited")
    assert stop.status == compute_v1.Operation.Status.RUNNING
    still = await local.library(local.operations.wait, operation=stop.name)
    assert still.status == compute_v1.Operation.Status.RUNNING
    assert (await local.library(local.instances.get, instance="waited")).status == "STOPPING"
    local.emulator.wait_limit = 30.0
    done = await local.library(local.operations.wait, operation=stop.name)
    assert (done.status, done.operation_type) == (compute_v1.Operation.Status.DONE, "stop")
    assert (await local.library(local.instances.get, instance="waited")).status == "TERMINATED"
    with pytest.raises(gexc.NotFound):
        await local.library(local.operations.get, operation="operation-unknown")


async def _open_ssh(local: GcpLocal, tag: str = "dumont-standby") -> None:
    """Open tcp:22 to VMs tagged ``tag`` from anywhere, with Google's FirewallsClient."""
    rule = compute_v1.Firewall(name=f"allow-ssh-{tag}", network="global/networks/default", target_tags=[tag],
                               allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
                               source_ranges=["0.0.0.0/0"])
    firewalls = local.client(compute_v1.FirewallsClient)
    operation = await asyncio.to_thread(firewalls.insert, project=PROJECT, firewall_resource=rule)
    await asyncio.to_thread(operation.result, timeout=10)


async def _banner(host: str, port: int, within: float) -> bytes:
    """The first line the server at ``host:port`` sends (an sshd's banner), waited for at most ``within`` s."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(within):
            return await reader.readline()
    finally:
        writer.close()


async def test_nossh_vms_run_but_their_sshd_never_greets(gcp_local: GcpLocal) -> None:
    """Given ``nossh`` for the next VM, when two VMs are created, then both are RUNNING with an address, the first
    accepts TCP but never sends an SSH banner, and the second greets as usual."""
    local = gcp_local
    assert (await local.control("POST", "/_dumont/faults/nossh", {"next": 1}))[0] == 200
    hung = await local.provider.create_standby(local.spec("hung"))
    fine = await local.provider.create_standby(local.spec("fine"))
    assert (hung.state, fine.state) == (InstanceState.RUNNING, InstanceState.RUNNING)
    assert hung.ssh_host and hung.ssh_port and fine.ssh_host and fine.ssh_port
    with pytest.raises(TimeoutError):
        await _banner(hung.ssh_host, hung.ssh_port, within=0.5)
    assert (await _banner(fine.ssh_host, fine.ssh_port, within=5)).startswith(b"SSH-2.0")
    assert local.cloud.pool.get("gcp-hung").state == HostState.PARTITIONED
    assert await local.control("GET", "/_dumont/faults") == (200, {"nossh_next": 0, "pending_next": 0})


async def test_the_fault_routes_check_what_they_are_given(gcp_local: GcpLocal) -> None:
    """Given the fault routes, then a bad count or an unknown fault is refused, and clear disarms everything."""
    local = gcp_local
    assert (await local.control("POST", "/_dumont/faults/nossh", {"next": -1}))[0] == 400
    assert (await local.control("POST", "/_dumont/faults/nossh", {"next": True}))[0] == 400
    status, body = await local.control("POST", "/_dumont/faults/melt", {})
    assert (status, body["error"]["code"]) == (404, 404)
    assert "nossh, pending, clear" in body["error"]["message"]
    assert await local.control("POST", "/_dumont/faults/nossh", {"next": 2}) == (200, {
        "nossh_next": 2, "pending_next": 0})
    assert await local.control("POST", "/_dumont/faults/clear") == (200, {"nossh_next": 0, "pending_next": 0})


# --------------------------------------------------------------------------- our provider

async def test_the_provider_creates_a_standby_that_answers_ssh_with_its_published_host_key(
        gcp_local: GcpLocal) -> None:
    """Given our provider and a project with no rules, when it creates the standby, then it first opens tcp:22
    to the standby's tag, the record says how to reach it (its own address, the non-root user dumont), the host key
    comes from the guest attributes, the user has passwordless sudo, and the startup script installs rsync."""
    local = gcp_local
    script = "apt-get install -y rsync"
    standby = await local.provider.create_standby(local.spec("standby-1", startup_script=script))
    host = local.cloud.pool.get("gcp-standby-1")
    assert (standby.state, standby.raw_state, standby.instance_id) == (InstanceState.RUNNING, "RUNNING", "standby-1")
    assert (standby.ssh_host, standby.ssh_user, standby.label) == (host.address, "dumont", "dumont-pair=train")
    [rule] = await local.provider.firewall_rules()
    assert (rule.name, rule.target_tags, rule.source_ranges) == ("dumont-allow-ssh", ("dumont-standby",),
                                                                 ("0.0.0.0/0",))
    host_keys = await local.provider.ssh_host_keys("standby-1")
    assert host_keys == [" ".join(host.host_public_key.split()[:2])]
    assert standby.ssh_host is not None and standby.ssh_port is not None
    text = await _ssh_run(local, standby.ssh_host, standby.ssh_port, standby.ssh_user, host_keys,
                          "sudo -n id -un")
    assert text == "root\n"

    async def rsync_installed() -> None:
        # The startup script runs as root at boot, beside sshd (as on GCE): wait for it, bounded.
        out = await _ssh_run(local, standby.ssh_host or "", standby.ssh_port or 0, "dumont", host_keys,
                             "command -v rsync || echo none")
        assert out.strip() != "none", "rsync is not installed yet"

    await eventually(rsync_installed, timeout=20, retry_on=(AssertionError,))


async def test_a_preemption_is_reported_as_such_and_a_user_stop_is_not(gcp_local: GcpLocal) -> None:
    """Given a running standby, when the user stops it it is STOPPED; when GCE preempts it it is PREEMPTED with its
    disk kept; once restarted and stopped by the user again, it is STOPPED, not PREEMPTED."""
    local = gcp_local
    await local.provider.create_standby(local.spec("standby-1"))
    workspace = local.cloud.pool.get("gcp-standby-1").workspace
    (workspace / "model.pt").write_bytes(b"weights")

    await local.provider.stop("standby-1")
    stopped = await local.provider.get("standby-1")
    assert (stopped.state, stopped.raw_state) == (InstanceState.STOPPED, "TERMINATED")
    assert await local.provider.was_preempted("standby-1") is None

    await local.provider.start("standby-1")
    record = await local.emulator.fault("preempt", local.cloud.pool.get("gcp-standby-1"))
    assert (record["state"], record["gcp_status"]) == ("stopped", "TERMINATED")
    preempted = await local.provider.get("standby-1")
    assert (preempted.state, preempted.raw_state) == (InstanceState.PREEMPTED, "TERMINATED")
    assert preempted.state.is_lost
    assert (workspace / "model.pt").read_bytes() == b"weights"  # termination action STOP keeps the disk
    assert len(await local.preempted_operations("standby-1")) == 1
    assert await local.provider.was_preempted("standby-1") is not None

    await local.provider.start("standby-1")
    assert (await local.provider.get("standby-1")).state is InstanceState.RUNNING
    await local.provider.stop("standby-1")
    assert (await local.provider.get("standby-1")).state is InstanceState.STOPPED


async def test_the_list_gives_every_vm_as_get_gives_it(gcp_local: GcpLocal) -> None:
    """Given three standbys, one preempted and one stopped by the user, then one list call reports each as a get
    does: RUNNING, PREEMPTED, STOPPED (the controller's one look at every standby per tick)."""
    local = gcp_local
    for name in ("standby-1", "standby-2", "standby-3"):
        await local.provider.create_standby(local.spec(name))
    await local.emulator.fault("preempt", local.cloud.pool.get("gcp-standby-2"))
    await local.provider.stop("standby-3")
    listed = {i.instance_id: i for i in await local.provider.list()}
    assert sorted(listed) == ["standby-1", "standby-2", "standby-3"]
    for name, seen in listed.items():
        got = await local.provider.get(name)
        assert (seen.state, seen.ssh_host, seen.ssh_port) == (got.state, got.ssh_host, got.ssh_port), name
    assert [listed[n].state for n in sorted(listed)] == [InstanceState.RUNNING, InstanceState.PREEMPTED,
                                                         InstanceState.STOPPED]


async def test_a_preemption_notice_shows_the_vm_stopping_then_terminated(gcp_local: GcpLocal) -> None:
    """Given a notice period, then the fault answers at once, the VM is PREEMPTED while STOPPING, and the
    preempted operation is DONE (waited for through the API, not by sleeping) once the host is stopped."""
    local = gcp_local
    local.emulator.preempt_notice = 0.3
    await local.provider.create_standby(local.spec("noticed"))
    record = await local.emulator.fault("preempt", local.cloud.pool.get("gcp-noticed"))
    assert (record["state"], record["gcp_status"], record["notice_seconds"]) == ("running", "STOPPING", 0.3)
    during = await local.provider.get("noticed")
    assert (during.state, during.raw_state) == (InstanceState.PREEMPTED, "STOPPING")

    [operation] = await local.preempted_operations("noticed")
    done = await local.library(local.operations.wait, operation=operation.name)
    assert done.status == compute_v1.Operation.Status.DONE
    after = await local.provider.get("noticed")
    assert (after.state, after.raw_state) == (InstanceState.PREEMPTED, "TERMINATED")
    assert local.cloud.pool.get("gcp-noticed").state == HostState.STOPPED


async def test_a_spot_vm_with_termination_action_delete_is_gone_after_preemption(gcp_local: GcpLocal) -> None:
    """Given termination action DELETE, when the VM is preempted, then it is TERMINATED and its host is gone."""
    local = gcp_local
    await local.provider.create_standby(local.spec("ephemeral", termination_action="DELETE"))
    await local.emulator.fault("preempt", local.cloud.pool.get("gcp-ephemeral"))
    gone = await local.provider.get("ephemeral")
    assert (gone.state, gone.raw_state) == (InstanceState.TERMINATED, "NOT_FOUND")
    assert "preempted with termination action DELETE" in (gone.status_message or "")
    assert all(h.name != "gcp-ephemeral" for h in local.cloud.pool.hosts())


async def test_a_killed_host_is_terminated_with_a_host_error_operation(gcp_local: GcpLocal) -> None:
    """Given a standby whose host dies, then GCE's view is TERMINATED (spot VMs never restart) with a hostError."""
    local = gcp_local
    await local.provider.create_standby(local.spec("crashed"))
    await local.cloud.pool.kill("gcp-crashed")
    crashed = await local.provider.get("crashed")
    assert (crashed.state, crashed.raw_state) == (InstanceState.STOPPED, "TERMINATED")
    request = compute_v1.ListZoneOperationsRequest(project=PROJECT, zone=ZONE,
                                                   filter='operationType = "compute.instances.hostError"')
    errors = await asyncio.to_thread(lambda: list(local.operations.list(request=request)))
    assert [op.target_link.rsplit("/", 1)[-1] for op in errors] == ["crashed"]
    await local.provider.get("crashed")
    assert len(await asyncio.to_thread(lambda: list(local.operations.list(request=request)))) == 1


async def test_missing_and_clashing_vms_give_the_interfaces_errors(gcp_local: GcpLocal) -> None:
    """Given no VM, get says TERMINATED, stop raises InstanceNotFound and delete succeeds; a name held by a VM
    without our labels is refused, one with our labels is adopted, and a bad name is a request error."""
    local = gcp_local
    assert (await local.provider.get("nothing")).state is InstanceState.TERMINATED
    with pytest.raises(InstanceNotFound, match="stop of VM nothing"):
        await local.provider.stop("nothing")
    await local.provider.delete("nothing")

    first = await local.provider.create_standby(local.spec("standby-1"))
    assert await local.provider.create_standby(local.spec("standby-1")) == first
    with pytest.raises(ProviderRequestError, match="without our labels"):
        await local.provider.create_standby(local.spec("standby-1", labels={"dumont-pair": "other"}))
    with pytest.raises(ProviderRequestError, match=r"resource\.name"):
        await local.provider.create_standby(local.spec("Bad_Name"))


async def test_dumont_local_preempt_reaches_the_emulator_through_the_daemon(gcp_local: GcpLocal) -> None:
    """Given the daemon's control API, when `preempt` names the VM by its instance id, then the VM is preempted."""
    local = gcp_local
    await local.provider.create_standby(local.spec("standby-1"))
    local.cloud.emulators = [local.emulator]
    runner = aiohttp.web.AppRunner(local.cloud.app(), access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/hosts/standby-1/preempt",
                headers={"Authorization": f"Bearer {local.cloud.token}"}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
            assert (body["name"], body["state"], body["gcp_status"]) == ("gcp-standby-1", "stopped", "TERMINATED")
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/hosts/standby-1/preempt",
                headers={"Authorization": f"Bearer {local.cloud.token}"}) as response:
            assert response.status == 400
            assert "TERMINATED, not RUNNING" in (await response.json())["error"]
    finally:
        await runner.cleanup()
    assert (await local.provider.get("standby-1")).state is InstanceState.PREEMPTED


async def test_vms_and_their_preemptions_survive_a_restart_of_the_local_cloud(gcp_local: GcpLocal) -> None:
    """Given a preempted standby, when the local cloud stops and starts again, then the VM is still there,
    still PREEMPTED, and starts again with its files; its name is not left half-taken."""
    local = gcp_local
    await local.provider.create_standby(local.spec("standby-1"))
    (local.cloud.pool.get("gcp-standby-1").workspace / "kept").write_text("yes")
    await local.emulator.fault("preempt", local.cloud.pool.get("gcp-standby-1"))
    await local.emulator.stop()
    await local.cloud.pool.shutdown()

    cloud = LocalCloud(local.cloud.state_dir)
    emulator = gcp.create(cloud)
    await emulator.start()
    try:
        provider = await GcpStandbyCloud.connect(GcpConfig(zone=ZONE,
                                                           credentials_file=cloud.state_dir / "gcp_credentials.json"))
        again = await provider.get("standby-1")
        assert (again.state, again.raw_state) == (InstanceState.PREEMPTED, "TERMINATED")
        await provider.start("standby-1")
        running = await provider.get("standby-1")
        assert running.state is InstanceState.RUNNING
        assert running.ssh_host is not None and running.ssh_port is not None
        keys = await provider.ssh_host_keys("standby-1")
        assert await _ssh_run(local, running.ssh_host, running.ssh_port, running.ssh_user, keys,
                              'cat "$DUMONT_WORKSPACE/kept"') == "yes"
    finally:
        await local.transport.close()
        await emulator.stop()
        await cloud.pool.shutdown()
        assert not cloud.pool.leftover_processes()


async def test_an_api_that_is_gone_is_unavailable_within_the_deadline(gcp_local: GcpLocal) -> None:
    """Given the emulator stopped, then calls and operation waits fail as ProviderUnavailable within their deadline."""
    local = gcp_local
    slow = compute_v1.Operation(name="operation-x", status="RUNNING")
    await local.emulator.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderUnavailable, match="could not reach the GCP Compute API for get of VM s"):
        await local.provider.get("s")
    with pytest.raises(ProviderUnavailable, match="wait for insert of VM s"):
        await local.provider.api.wait_done(slow, "insert of VM s", deadline=1.2)
    assert loop.time() - started < 5


# --------------------------------------------------------------------------- project-level resources


async def test_firewall_rules_are_inserted_got_listed_with_a_filter_and_deleted(gcp_local: GcpLocal) -> None:
    """Given a new project, then it has no rules; Google's FirewallsClient inserts one (DONE at once), gets it as
    compute#firewall JSON, lists it by filter, is refused a duplicate or a bad rule, and deletes it."""
    local = gcp_local
    firewalls = local.client(compute_v1.FirewallsClient)

    def listed(filter_: str = "") -> list[str]:
        request = compute_v1.ListFirewallsRequest(project=PROJECT, filter=filter_)
        return [rule.name for rule in firewalls.list(request=request)]

    assert await asyncio.to_thread(listed) == []  # unkind first: no default-allow-ssh
    rule = compute_v1.Firewall(name="dumont-allow-ssh", network="global/networks/default", direction="INGRESS",
                               priority=1000, source_ranges=["203.0.113.0/24"], target_tags=["dumont-standby"],
                               allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])])
    insert = await asyncio.to_thread(firewalls.insert, project=PROJECT, firewall_resource=rule)
    await asyncio.to_thread(insert.result, timeout=10)
    assert insert.target_link.endswith("/global/firewalls/dumont-allow-ssh")
    got = await asyncio.to_thread(firewalls.get, project=PROJECT, firewall="dumont-allow-ssh")
    assert (got.direction, got.priority, list(got.target_tags), got.allowed[0].I_p_protocol,
            list(got.allowed[0].ports), list(got.source_ranges)) == (
        "INGRESS", 1000, ["dumont-standby"], "tcp", ["22"], ["203.0.113.0/24"])
    assert got.network == f"{local.url}/compute/v1/projects/{PROJECT}/global/networks/default"
    other = compute_v1.Firewall(name="web", allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["80"])])
    await asyncio.to_thread((await asyncio.to_thread(firewalls.insert, project=PROJECT,
                                                     firewall_resource=other)).result, timeout=10)
    assert await asyncio.to_thread(listed, "targetTags = dumont-standby") == ["dumont-allow-ssh"]
    assert await asyncio.to_thread(listed, 'name = "web"') == ["web"]
    assert await asyncio.to_thread(listed) == ["dumont-allow-ssh", "web"]
    with pytest.raises(gexc.Conflict, match="already exists"):
        await asyncio.to_thread(firewalls.insert, project=PROJECT, firewall_resource=rule)
    bad = compute_v1.Firewall(name="bad", allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22-1"])])
    with pytest.raises(gexc.BadRequest, match=r"resource\.allowed\.ports"):
        await asyncio.to_thread(firewalls.insert, project=PROJECT, firewall_resource=bad)
    assert await asyncio.to_thread(listed) == ["dumont-allow-ssh", "web"]  # in another project: none
    assert [r.name for r in await asyncio.to_thread(
        lambda: list(firewalls.list(project="elsewhere")))] == []

    delete = await asyncio.to_thread(firewalls.delete, project=PROJECT, firewall="web")
    await asyncio.to_thread(delete.result, timeout=10)
    operations = local.client(compute_v1.GlobalOperationsClient)
    done = await asyncio.to_thread(operations.get, project=PROJECT, operation=delete.name)
    assert (done.status, done.operation_type) == (compute_v1.Operation.Status.DONE, "delete")
    with pytest.raises(gexc.NotFound, match="global/firewalls/web"):
        await asyncio.to_thread(firewalls.get, project=PROJECT, firewall="web")


async def test_the_project_shows_its_common_metadata_set_with_the_current_fingerprint(gcp_local: GcpLocal) -> None:
    """Given a project, then projects.get shows empty common metadata; setCommonInstanceMetadata with the read
    fingerprint sets enable-oslogin=TRUE for all to see; a stale fingerprint is 412."""
    local = gcp_local
    projects = local.client(compute_v1.ProjectsClient)
    project = await asyncio.to_thread(projects.get, project=PROJECT)
    assert (project.name, list(project.common_instance_metadata.items)) == (PROJECT, [])
    stale = project.common_instance_metadata.fingerprint
    metadata = compute_v1.Metadata(fingerprint=stale, items=[compute_v1.Items(key="enable-oslogin", value="TRUE")])
    operation = await asyncio.to_thread(projects.set_common_instance_metadata, project=PROJECT,
                                        metadata_resource=metadata)
    await asyncio.to_thread(operation.result, timeout=10)
    project = await asyncio.to_thread(projects.get, project=PROJECT)
    assert [(i.key, i.value) for i in project.common_instance_metadata.items] == [("enable-oslogin", "TRUE")]
    assert project.common_instance_metadata.fingerprint != stale
    with pytest.raises(gexc.PreconditionFailed, match="fingerprint"):
        await asyncio.to_thread(projects.set_common_instance_metadata, project=PROJECT, metadata_resource=metadata)


async def test_zones_and_regions_are_known_or_not_found(gcp_local: GcpLocal) -> None:
    """Given the local zones, then local-a is UP in region local, an unknown zone or region is NotFound."""
    local = gcp_local
    zones, regions = local.client(compute_v1.ZonesClient), local.client(compute_v1.RegionsClient)
    zone = await asyncio.to_thread(zones.get, project=PROJECT, zone=ZONE)
    assert (zone.name, zone.status, zone.region.rsplit("/", 1)[-1]) == (ZONE, "UP", "local")
    with pytest.raises(gexc.NotFound, match="zones/us-nowhere1-z"):
        await asyncio.to_thread(zones.get, project=PROJECT, zone="us-nowhere1-z")
    with pytest.raises(gexc.NotFound, match="regions/mars"):
        await asyncio.to_thread(regions.get, project=PROJECT, region="mars")
    assert {z.name for z in await asyncio.to_thread(lambda: list(zones.list(project=PROJECT)))} == {
        "local-a", "local-b", "local-c"}


async def test_quotas_count_the_vms_and_an_insert_past_a_limit_fails_inside_its_done_operation(
        gcp_local: GcpLocal) -> None:
    """Given a spot standby, then the region's quotas count its 2 vCPUs, its IP and its 20 GB; a stopped VM keeps
    only its disk; with PREEMPTIBLE_CPUS at 2, a second insert's DONE operation carries QUOTA_EXCEEDED, which
    Google's .result() raises and our provider reports, and no VM is left behind."""
    local = gcp_local
    regions = local.client(compute_v1.RegionsClient)

    async def quotas() -> dict[str, tuple[float, float]]:
        region = await asyncio.to_thread(regions.get, project=PROJECT, region="local")
        return {q.metric: (q.limit, q.usage) for q in region.quotas}

    await local.provider.create_standby(local.spec("first"))
    assert await quotas() == {"CPUS": (24.0, 0.0), "PREEMPTIBLE_CPUS": (24.0, 2.0), "IN_USE_ADDRESSES": (8.0, 1.0),
                              "DISKS_TOTAL_GB": (4096.0, 20.0), "SSD_TOTAL_GB": (500.0, 0.0)}
    assert await local.control("POST", f"/_dumont/projects/{PROJECT}/quotas", {"PREEMPTIBLE_CPUS": 2}) == (
        200, {"CPUS": 24.0, "PREEMPTIBLE_CPUS": 2.0, "IN_USE_ADDRESSES": 8.0, "DISKS_TOTAL_GB": 4096.0,
              "SSD_TOTAL_GB": 500.0})
    assert (await local.control("POST", f"/_dumont/projects/{PROJECT}/quotas", {"GPUS": 1}))[0] == 400

    insert = await local.library(local.instances.insert,
                                 instance_resource=standby_resource(local.spec("second"), ZONE))
    assert insert.status == compute_v1.Operation.Status.DONE
    with pytest.raises(gexc.Forbidden, match="Quota 'PREEMPTIBLE_CPUS' exceeded"):
        await asyncio.to_thread(insert.result, timeout=10)
    with pytest.raises(ProviderRequestError, match="QUOTA_EXCEEDED"):
        await local.provider.create_standby(local.spec("third"))
    assert [h.name for h in local.cloud.pool.hosts()] == ["gcp-first"]

    await local.provider.stop("first")
    assert (await quotas())["PREEMPTIBLE_CPUS"] == (2.0, 0.0)
    assert (await quotas())["DISKS_TOTAL_GB"] == (4096.0, 20.0)  # a stopped VM keeps its disk
    await local.provider.start("first")
    assert (await quotas())["PREEMPTIBLE_CPUS"] == (2.0, 2.0)


async def test_set_metadata_needs_the_current_fingerprint(gcp_local: GcpLocal) -> None:
    """Given a VM, when Google's client sets its metadata with the fingerprint it read, then the items are
    replaced (the emulator's own port item aside); a second write with the now stale fingerprint is 412."""
    local = gcp_local
    await local.provider.create_standby(local.spec("meta"))
    vm = await local.library(local.instances.get, instance="meta")
    items = [i for i in vm.metadata.items if i.key != "ssh-keys"] + [compute_v1.Items(key="note", value="hi")]
    metadata = compute_v1.Metadata(fingerprint=vm.metadata.fingerprint, items=items)
    operation = await local.library(local.instances.set_metadata, instance="meta", metadata_resource=metadata)
    await asyncio.to_thread(operation.result, timeout=10)
    again = await local.library(local.instances.get, instance="meta")
    assert {i.key: i.value for i in again.metadata.items}["note"] == "hi"
    assert "ssh-keys" not in {i.key for i in again.metadata.items}
    assert again.metadata.fingerprint != vm.metadata.fingerprint
    with pytest.raises(gexc.PreconditionFailed, match="Supplied fingerprint does not match"):
        await local.library(local.instances.set_metadata, instance="meta", metadata_resource=metadata)
    with pytest.raises(gexc.NotFound):
        await local.library(local.instances.set_metadata, instance="nothing", metadata_resource=metadata)


# --------------------------------------------------------------------------- the guest and the network, live


async def _reach(local: GcpLocal, name: str, user: str = "dumont", command: str = "echo $USER") -> str:
    """Run ``command`` on VM ``name`` as ``user`` over real SSH, at the address and port its record gives."""
    record = await local.provider.get(name)
    assert record.ssh_host and record.ssh_port, f"VM {name} has no address: {record}"
    keys = await local.provider.ssh_host_keys(name)
    return await _ssh_run(local, record.ssh_host, record.ssh_port, user, keys, command)


async def test_a_rule_deleted_or_added_closes_or_opens_ssh_on_a_running_vm(gcp_local: GcpLocal) -> None:
    """Given a reachable standby, when its only rule is deleted, then SSH gets no answer (the VM runs on); when
    ensure_ssh_firewall puts it back, then SSH answers again; a second ensure finds it and creates nothing."""
    local = gcp_local
    standby = await local.provider.create_standby(local.spec("standby-1"))
    assert standby.ssh_host and standby.ssh_port
    firewalls = local.client(compute_v1.FirewallsClient)
    delete = await asyncio.to_thread(firewalls.delete, project=PROJECT, firewall="dumont-allow-ssh")
    await asyncio.to_thread(delete.result, timeout=10)
    with pytest.raises(TimeoutError):
        await _banner(standby.ssh_host, standby.ssh_port, within=0.5)
    assert (await local.provider.get("standby-1")).state is InstanceState.RUNNING  # GCE sees a running VM

    assert await local.provider.ensure_ssh_firewall("dumont-standby", ("0.0.0.0/0",)) is True
    assert await _reach(local, "standby-1") == "dumont\n"
    assert await local.provider.ensure_ssh_firewall("dumont-standby", ("0.0.0.0/0",)) is False


async def test_two_callers_creating_the_ssh_rule_at_once_both_succeed(gcp_local: GcpLocal) -> None:
    """Given no rule, when two pairs ensure it at the same time (both list, both insert), then one creates it and
    the other, refused with "already exists", finds the rule that opens tcp:22 and goes on (a fleet's first start
    failed its standbys on this)."""
    ensure = gcp_local.provider.ensure_ssh_firewall
    created = await asyncio.gather(*(ensure("dumont-standby", ("0.0.0.0/0",)) for _ in range(4)))
    assert sorted(created) == [False, False, False, True]


async def test_a_deny_rule_of_higher_precedence_is_named_instead_of_worked_around(gcp_local: GcpLocal) -> None:
    """Given a rule denying tcp:22 at priority 100, then ensure_ssh_firewall refuses, naming that rule, and
    creating the standby fails before any VM exists."""
    local = gcp_local
    deny = compute_v1.Firewall(name="no-ssh", priority=100, source_ranges=["0.0.0.0/0"],
                               denied=[compute_v1.Denied(I_p_protocol="tcp", ports=["22"])])
    firewalls = local.client(compute_v1.FirewallsClient)
    await asyncio.to_thread((await asyncio.to_thread(firewalls.insert, project=PROJECT,
                                                     firewall_resource=deny)).result, timeout=10)
    with pytest.raises(ProviderRequestError, match=r"no-ssh \(priority 100\)"):
        await local.provider.create_standby(local.spec("standby-1"))
    assert local.cloud.pool.hosts() == []


async def test_project_wide_os_login_locks_out_metadata_keys_unless_the_vm_turns_it_off(gcp_local: GcpLocal) -> None:
    """Given enable-oslogin=TRUE on the project, then a VM that says nothing of OS Login lets no metadata key in,
    while our standby (enable-oslogin=FALSE on the VM) does; the doctor read sees it on."""
    local = gcp_local
    await _open_ssh(local)
    projects = local.client(compute_v1.ProjectsClient)
    fingerprint = (await asyncio.to_thread(projects.get, project=PROJECT)).common_instance_metadata.fingerprint
    oslogin = compute_v1.Metadata(fingerprint=fingerprint, items=[compute_v1.Items(key="enable-oslogin",
                                                                                    value="TRUE")])
    await asyncio.to_thread((await asyncio.to_thread(projects.set_common_instance_metadata, project=PROJECT,
                                                     metadata_resource=oslogin)).result, timeout=10)
    assert (await local.provider.project_info()).oslogin_enabled is True

    plain = standby_resource(local.spec("plain"), ZONE)
    plain.metadata.items = [i for i in plain.metadata.items if i.key != "enable-oslogin"]
    await asyncio.to_thread((await local.library(local.instances.insert, instance_resource=plain)).result,
                            timeout=10)
    with pytest.raises(AuthRefused):
        await _reach(local, "plain")
    await local.provider.create_standby(local.spec("ours"))
    assert await _reach(local, "ours") == "dumont\n"


async def test_set_ssh_keys_lets_a_new_user_in_at_once_and_changes_nothing_the_second_time(
        gcp_local: GcpLocal) -> None:
    """Given a running standby, when set_ssh_keys gives alice our key, then alice logs in at once and dumont
    still does; the same call again writes nothing; root is refused before any call."""
    local = gcp_local
    await local.provider.create_standby(local.spec("standby-1"))

    async def fingerprint() -> str:
        return str((await local.library(local.instances.get, instance="standby-1")).metadata.fingerprint)

    before = await fingerprint()
    await local.provider.set_ssh_keys("standby-1", "alice", [local.public_key])
    assert await _reach(local, "standby-1", "alice") == "alice\n"
    assert await _reach(local, "standby-1", "dumont") == "dumont\n"
    written = await fingerprint()
    assert written != before
    await local.provider.set_ssh_keys("standby-1", "alice", [local.public_key])
    assert await fingerprint() == written  # idempotent: nothing was written
    with pytest.raises(ProviderRequestError, match="refuse root"):
        await local.provider.set_ssh_keys("standby-1", "root", [local.public_key])
    with pytest.raises(InstanceNotFound):
        await local.provider.set_ssh_keys("nothing", "alice", [local.public_key])


async def test_a_startup_script_set_later_runs_at_the_next_boot(gcp_local: GcpLocal) -> None:
    """Given a running standby, when its metadata gains a startup-script, then the script runs as root when the
    VM next starts."""
    local = gcp_local
    await local.provider.create_standby(local.spec("standby-1"))
    vm = await local.library(local.instances.get, instance="standby-1")
    items = [*vm.metadata.items, compute_v1.Items(key="startup-script", value='id -un > "$DUMONT_WORKSPACE/boot"')]
    metadata = compute_v1.Metadata(fingerprint=vm.metadata.fingerprint, items=items)
    await asyncio.to_thread((await local.library(local.instances.set_metadata, instance="standby-1",
                                                 metadata_resource=metadata)).result, timeout=10)
    await local.provider.stop("standby-1")
    await local.provider.start("standby-1")

    async def booted() -> None:
        assert await _reach(local, "standby-1", command='cat "$DUMONT_WORKSPACE/boot" 2>/dev/null') == "root\n"

    await eventually(booted, timeout=20, retry_on=(AssertionError,))


async def test_doctor_reads_the_zone_quotas_and_rules(gcp_local: GcpLocal) -> None:
    """Given the emulator, then the provider's read-only calls say the zone exists (another does not), give the
    region's quotas with the standby counted, and list the SSH rule it created."""
    local = gcp_local
    assert await local.provider.zone_exists() is True
    assert await local.provider.zone_exists("us-nowhere1-z") is False
    info = await local.provider.project_info()
    assert (info.name, info.oslogin_enabled) == (PROJECT, False)
    await local.provider.create_standby(local.spec("standby-1"))
    quotas = {q.metric: q for q in await local.provider.quotas()}
    assert (quotas["PREEMPTIBLE_CPUS"].usage, quotas["IN_USE_ADDRESSES"].available) == (2.0, 7.0)
    assert [r.name for r in await local.provider.firewall_rules()] == ["dumont-allow-ssh"]
