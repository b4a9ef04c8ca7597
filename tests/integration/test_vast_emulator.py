"""Given the local cloud's Vast emulator over real hosts, the official vastai CLI 1.9.1 and our provider both work.

The emulator runs in this process (its hosts are real sshd processes); the CLI runs as a subprocess with an
isolated HOME and XDG dirs, pointed at the emulator by VAST_URL and --url. The CLI exits 0 even after an HTTP
error (cloud-apis.md §0 #4), so every call checks stderr as well.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from dumont.errors import AuthRefused, HostUnreachable
from dumont.localcloud import layout, procs
from dumont.localcloud.daemon import LocalCloud
from dumont.localcloud.emulators.registry import RegistryEmulator
from dumont.localcloud.emulators.vast import VastEmulator
from dumont.localcloud.emulators.vast_market import search
from dumont.localcloud.hosts import HostState
from dumont.providers.base import (
    Instance,
    InstanceState,
    LaunchRequest,
    Offer,
    OfferQuery,
    ProviderAuthError,
    ProviderRequestError,
    ProviderUnavailable,
)
from dumont.providers.vast import VastClient, VastMarket, image_exists, load_api_key, rent_first_available
from dumont.transport.keys import KnownHosts, generate_keypair
from dumont.transport.ssh import SshTarget, SshTransport
from tests.conftest import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60.0
IMAGE = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"
SEED_QUERY = OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=0.5, min_reliability=0.98,
                        regions=("TH", "VN", "JP", "EU"), disk_gb=20, interruptible=True, limit=8)


def vastai_cli() -> Path:
    """The official CLI: $DUMONT_VASTAI_CLI, else the venv `make test` builds. Missing is a failure, not a skip."""
    explicit = os.environ.get("DUMONT_VASTAI_CLI")
    path = Path(explicit) if explicit else REPO / ".venv-vastai" / "bin" / "vastai"
    if not path.exists():
        pytest.fail(f"the official vastai CLI 1.9.1 is not at {path}: run `make .venv-vastai/bin/vastai` "
                    "(or point DUMONT_VASTAI_CLI at one)")
    return path


@dataclass
class Cli:
    """One finished vastai command."""

    stdout: str
    stderr: str
    returncode: int

    def json(self) -> Any:
        assert self.returncode == 0 and not self.stderr.strip(), f"vastai failed: {self.stderr}"
        return json.loads(self.stdout)


@dataclass
class VastCloud:
    """An emulator over a fresh local cloud, an SSH key to attach, and a transport that pins host keys."""

    root: Path
    cloud: LocalCloud
    emulator: VastEmulator
    url: str
    transport: SshTransport
    known_hosts: KnownHosts
    attached_key: Path
    attached_public_key: str
    markets: list[VastMarket] = field(default_factory=list)

    @property
    def key(self) -> str:
        return (self.cloud.state_dir / "vast_api_key").read_text().strip()

    async def vastai(self, *args: str, api_key: str | None = None) -> Cli:
        """Run the official CLI against the emulator, as a user would, with nothing of ours in its HOME."""
        home = self.root / "home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CI": "1",
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
               "XDG_STATE_HOME": str(home / ".local" / "state"), "VAST_URL": self.url, "LANG": "C.UTF-8"}
        proc = await asyncio.create_subprocess_exec(
            str(vastai_cli()), "--url", self.url, "--api-key", api_key or self.key, *args, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Cli(out.decode(), err.decode(), proc.returncode or 0)

    def market(self, key_file: Path | None = None) -> VastMarket:
        """Our provider against the emulator, with the emulator's key file unless told otherwise."""
        key = load_api_key(key_file or self.cloud.state_dir / "vast_api_key")
        market = VastMarket(VastClient(self.url, key))
        self.markets.append(market)
        return market

    async def ssh(self, name: str, host: str, port: int, user: str, command: str) -> str:
        """Run ``command`` on the instance's host over real SSH, with the attached key and its pinned host key."""
        self.known_hosts.pin(name, self.cloud.pool.get(name).host_public_key)
        result = await self.transport.run(SshTarget(name, host, port, user), ["sh", "-c", command], timeout=20)
        return result.text.strip()


@pytest.fixture
async def vast(tmp_path: Path) -> AsyncIterator[VastCloud]:
    """A Vast emulator with no provisioning delay; torn down with a check that no host process survives."""
    root = tmp_path / "vast cloud"
    root.mkdir()
    cloud = LocalCloud(root / "state")
    generate_keypair(layout.user_key(cloud.state_dir), "dumont-test-user")  # the account's one key at the start
    emulator = VastEmulator(cloud, delay=0)
    url = await emulator.start()
    public = generate_keypair(root / "attached_key", "dumont-test-attached")
    known = KnownHosts(root / "known_hosts")
    transport = SshTransport(identity=root / "attached_key", known_hosts=known, multiplex=False)
    setup = VastCloud(root, cloud, emulator, url, transport, known, root / "attached_key", public)
    try:
        yield setup
    finally:
        for market in setup.markets:
            await market.close()
        await transport.close()
        await emulator.stop()
        await cloud.pool.shutdown()
        leftovers = cloud.pool.leftover_processes()
        assert not leftovers, f"processes of the local cloud survived teardown: {sorted(leftovers)}"


# ---------------------------------------------------------------------------------------------- the official CLI


async def test_cli_search_returns_only_matching_offers_in_the_order_asked(vast: VastCloud) -> None:
    """Given a query on gpu_ram, dph, reliability and geolocation, every offer matches and the order holds."""
    found = (await vast.vastai("search", "offers", "gpu_ram>=8 dph<=0.5 reliability>0.98 geolocation in [TH,VN,JP]",
                               "-o", "dph_total", "--raw")).json()
    assert found, "the seed's market must have offers within the default limits"
    for offer in found:
        assert offer["gpu_ram"] >= 8000 and offer["dph_total"] <= 0.5 and offer["reliability"] > 0.98
        assert offer["geolocation"][-2:] in {"TH", "VN", "JP"}
    prices = [o["dph_total"] for o in found]
    assert prices == sorted(prices)
    body = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True},
            "gpu_ram": {"gte": 8000.0}, "dph_total": {"lte": "0.5"}, "reliability": {"gt": "0.98"},
            "geolocation": {"in": ["TH", "VN", "JP"]}, "order": [["dph_total", "asc"]], "type": "on-demand",
            "allocated_storage": 5.0}
    expected = search(vast.emulator.catalogue.values(), body)
    assert [o["id"] for o in found] == [o["id"] for o in expected], "nothing matching is left out"

    best_first = (await vast.vastai("search", "offers", "gpu_name=RTX_4090 num_gpus=1 geolocation in [TH,VN,JP,DE]",
                                    "-i", "-o", "reliability-", "--limit", "5", "--storage", "50", "--raw")).json()
    assert 0 < len(best_first) <= 5
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 and o["is_bid"] for o in best_first)
    assert [o["reliability"] for o in best_first] == sorted((o["reliability"] for o in best_first), reverse=True)
    assert all(o["dph_total"] >= o["min_bid"] for o in best_first), "a bid search is priced at the minimum bid"


async def test_cli_rents_on_demand_reaches_it_by_ssh_and_manages_it(vast: VastCloud) -> None:
    """Create, attach a key, SSH in, show, stop, start (files kept), destroy -y: each as the CLI reports it."""
    query = "gpu_ram>=8 dph<=0.5 geolocation in [JP]"
    offer = (await vast.vastai("search", "offers", query, "-o", "dph_total", "--raw")).json()[0]
    created = (await vast.vastai("create", "instance", str(offer["id"]), "--image", "pytorch/pytorch", "--disk", "20",
                                 "--ssh", "--direct", "--label", "dumont-cli", "--raw")).json()
    assert created["success"] is True
    instance_id = created["new_contract"]
    name = f"vast-{instance_id}"
    after = (await vast.vastai("search", "offers", query, "-o", "dph_total", "--raw")).json()
    assert offer["id"] not in [o["id"] for o in after], "a rented machine leaves the market"

    attached = await vast.vastai("attach", "ssh", str(instance_id), vast.attached_public_key)
    assert not attached.stderr and ast.literal_eval(attached.stdout.strip())["success"] is True
    row = (await vast.vastai("show", "instance", str(instance_id), "--raw")).json()
    assert (row["id"], row["actual_status"], row["intended_status"]) == (instance_id, "running", "running")
    assert (row["label"], row["is_bid"], row["machine_id"]) == ("dumont-cli", False, offer["machine_id"])
    host, port = row["public_ipaddr"], int(row["ports"]["22/tcp"][0]["HostPort"])
    assert (host, port) == (row["ssh_host"], row["ssh_port"])
    assert await vast.ssh(name, host, port, "root", 'echo "$DUMONT_HOST" > "$DUMONT_WORKSPACE/who"; '
                          'cat "$DUMONT_WORKSPACE/who"') == name
    url = await vast.vastai("ssh-url", str(instance_id))
    assert url.stdout.strip() == f"ssh://root@{host}:{port}"

    listed = (await vast.vastai("show", "instances", "--raw")).json()
    assert [(i["id"], i["label"]) for i in listed] == [(instance_id, "dumont-cli")]

    stopped = await vast.vastai("stop", "instance", str(instance_id), "--raw")
    assert stopped.stdout.strip() == f"stopping instance {instance_id}." and not stopped.stderr
    row = (await vast.vastai("show", "instance", str(instance_id), "--raw")).json()
    assert (row["actual_status"], row["intended_status"], row["cur_state"]) == ("stopped", "stopped", "stopped")
    assert vast.cloud.pool.get(name).state == HostState.STOPPED
    with pytest.raises(HostUnreachable):
        await vast.ssh(name, host, port, "root", "true")

    started = await vast.vastai("start", "instance", str(instance_id), "--raw")
    assert started.stdout.strip() == f"starting instance {instance_id}." and not started.stderr
    row = (await vast.vastai("show", "instance", str(instance_id), "--raw")).json()
    assert row["actual_status"] == "running"
    assert await vast.ssh(name, row["ssh_host"], row["ssh_port"], "root",
                          'cat "$DUMONT_WORKSPACE/who"') == name, "a stopped instance keeps its disk"

    destroyed = await vast.vastai("destroy", "instance", str(instance_id), "-y", "--raw")
    assert (destroyed.stdout, destroyed.stderr, destroyed.returncode) == ("", "", 0)
    assert (await vast.vastai("show", "instance", str(instance_id), "--raw")).json() == {"instances": None}
    assert name not in [h.name for h in vast.cloud.pool.hosts()]
    back = (await vast.vastai("search", "offers", query, "-o", "dph_total", "--raw")).json()
    assert offer["id"] in [o["id"] for o in back], "a destroyed instance frees its machine"


async def test_cli_rents_interruptible_with_a_bid_and_only_the_attached_key_works(vast: VastCloud) -> None:
    """--bid_price rents an interruptible instance at that price; a key never given to it, or detached, is refused."""
    offer = (await vast.vastai("search", "offers", "gpu_ram>=8 dph<=0.5 geolocation in [TH]", "-i",
                               "-o", "dph_total", "--raw")).json()[0]
    bid = round(offer["min_bid"] + 0.01, 4)
    created = (await vast.vastai("create", "instance", str(offer["id"]), "--image", IMAGE, "--disk", "10",
                                 "--bid_price", str(bid), "--label", "dumont-bid", "--raw")).json()
    instance_id = created["new_contract"]
    row = (await vast.vastai("show", "instance", str(instance_id), "--raw")).json()
    assert row["is_bid"] is True and row["actual_status"] == "running"
    assert row["dph_total"] == pytest.approx(bid + offer["storage_cost"] * 10 / 720, abs=1e-3)

    name = f"vast-{instance_id}"
    with pytest.raises(AuthRefused):
        await vast.ssh(name, row["ssh_host"], row["ssh_port"], "root", "true")
    attached = await vast.vastai("attach", "ssh", str(instance_id), vast.attached_public_key)
    assert await vast.ssh(name, row["ssh_host"], row["ssh_port"], "root", 'echo "$DUMONT_HOST"') == name
    key_id = ast.literal_eval(attached.stdout.strip())["key_id"]
    detached = await vast.vastai("detach", "ssh", str(instance_id), str(key_id))
    assert not detached.stderr and ast.literal_eval(detached.stdout.strip())["success"] is True
    with pytest.raises(AuthRefused):
        await vast.ssh(name, row["ssh_host"], row["ssh_port"], "root", "true")


async def test_cli_with_a_wrong_key_gets_401_on_stderr_and_exit_0(vast: VastCloud) -> None:
    """The emulator refuses a wrong key the way Vast does; the CLI reports it on stderr and still exits 0."""
    result = await vast.vastai("show", "instances", "--raw", api_key="not-the-key")
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(result.stderr.splitlines()[0]) == {"error": True, "status_code": 401, "msg": "Invalid user key"}


def _printed_dict(stdout: str, prefix: str) -> Any:
    """The Python dict the CLI printed after ``prefix`` (it prints reprs, not JSON, for these commands)."""
    line = next(line for line in stdout.splitlines() if line.startswith(prefix))
    return ast.literal_eval(line.removeprefix(prefix).strip())


async def _cli_rent(vast: VastCloud, query: str, label: str) -> dict[str, Any]:
    offer = (await vast.vastai("search", "offers", query, "-o", "dph_total", "--raw")).json()[0]
    created = (await vast.vastai("create", "instance", str(offer["id"]), "--image", IMAGE, "--disk", "10",
                                 "--label", label, "--raw")).json()
    row: dict[str, Any] = (await vast.vastai("show", "instance", str(created["new_contract"]), "--raw")).json()
    return row


async def test_cli_account_keys_reach_only_instances_created_after_them(vast: VastCloud) -> None:
    """The account starts with the user key; a key added later reaches new instances only, and deleting it
    keeps it off the next ones while instances that have it keep it (Vast: keys are copied at creation)."""
    user_key = (layout.user_key(vast.cloud.state_dir).with_suffix(".pub")).read_text().strip()
    listed = (await vast.vastai("show", "ssh-keys", "--raw")).json()
    assert [(k["id"], k["key"], k["deleted_at"]) for k in listed] == [(1, user_key, None)]

    before = await _cli_rent(vast, "gpu_ram>=8 geolocation in [JP]", "before")
    created = await vast.vastai("create", "ssh-key", vast.attached_public_key)
    assert not created.stderr and "Note: You may need to add the new public key" in created.stdout
    key = _printed_dict(created.stdout, "ssh-key created")["key"]
    assert (key["id"], key["public_key"]) == (2, vast.attached_public_key)
    after = await _cli_rent(vast, "gpu_ram>=8 geolocation in [TH]", "after")

    async def logs_in(row: dict[str, Any]) -> str:
        return await vast.ssh(f"vast-{row['id']}", row["ssh_host"], row["ssh_port"], "root",
                              'echo "$DUMONT_HOST"')

    assert await logs_in(after) == f"vast-{after['id']}"
    with pytest.raises(AuthRefused):
        await logs_in(before)

    deleted = await vast.vastai("delete", "ssh-key", "2")
    assert not deleted.stderr and ast.literal_eval(deleted.stdout.strip()) == {"success": True}
    assert [k["key"] for k in (await vast.vastai("show", "ssh-keys", "--raw")).json()] == [user_key]
    later = await _cli_rent(vast, "gpu_ram>=8 geolocation in [VN]", "later")
    with pytest.raises(AuthRefused):
        await logs_in(later)
    assert await logs_in(after) == f"vast-{after['id']}", "an instance keeps the keys it was created with"

    again = await vast.vastai("delete", "ssh-key", "2", "--raw")
    assert json.loads(again.stderr.splitlines()[0])["status_code"] == 400


async def test_cli_updates_an_account_key_and_refuses_what_is_not_one(vast: VastCloud) -> None:
    """update ssh-key replaces the key under the same id; a body that is no public key is refused with 400."""
    updated = await vast.vastai("update", "ssh-key", "1", vast.attached_public_key)
    assert not updated.stderr
    assert ast.literal_eval(updated.stdout.strip())["key"]["public_key"] == vast.attached_public_key
    assert [(k["id"], k["key"]) for k in (await vast.vastai("show", "ssh-keys", "--raw")).json()] == [
        (1, vast.attached_public_key)]
    refused = await vast.vastai("create", "ssh-key", "not-a-key", "--raw")
    assert json.loads(refused.stderr.splitlines()[-1])["status_code"] == 400


async def test_cli_rent_of_an_unpublished_image_never_runs(vast: VastCloud) -> None:
    """The tag without -runtime is not published: the container is created, the pull fails, its host never starts,
    and starting it again changes nothing (research/real-instances.md B4)."""
    vast.emulator.delay = 0.2
    unpublished = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8"
    offer = (await vast.vastai("search", "offers", "gpu_ram>=8 geolocation in [JP]", "--raw")).json()[0]
    created = (await vast.vastai("create", "instance", str(offer["id"]), "--image", unpublished, "--disk", "10",
                                 "--raw")).json()
    instance_id = created["new_contract"]
    host = vast.cloud.pool.get(f"vast-{instance_id}")

    async def failed() -> dict[str, Any]:
        row: dict[str, Any] = (await vast.vastai("show", "instance", str(instance_id), "--raw")).json()
        assert row["actual_status"] == "created"
        return row

    row = await failed()  # a CLI call takes longer than half the delay: the pull has been tried
    assert (row["intended_status"], row["cur_state"]) == ("running", "running")
    assert row["status_msg"] == (f"Error response from daemon: manifest for {unpublished} not found: "
                                 "manifest unknown: manifest unknown")
    await vast.vastai("start", "instance", str(instance_id), "--raw")
    await vast.vastai("reboot", "instance", str(instance_id), "--raw")
    assert (await failed())["status_msg"] == row["status_msg"]
    assert (host.state, host.pid, host.processes()) == (HostState.STOPPED, None, set())


async def test_the_registry_answers_docker_hubs_tag_lookup() -> None:
    """A published tag is 200 with its name, digest and date; the seed's unsuffixed tag is 404 with a message."""
    registry = RegistryEmulator()
    url = await registry.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            found = await http.get("/v2/namespaces/pytorch/repositories/pytorch/tags/2.1.0-cuda12.1-cudnn8-runtime")
            missing = await http.get("/v2/namespaces/pytorch/repositories/pytorch/tags/2.1.0-cuda12.1-cudnn8")
            official = await http.get("/v2/namespaces/library/repositories/ubuntu/tags/22.04")
    finally:
        await registry.stop()
    assert found.status_code == 200 and found.headers["Content-Type"] == "application/json"
    tag = found.json()
    assert tag["name"] == "2.1.0-cuda12.1-cudnn8-runtime" and tag["digest"].startswith("sha256:")
    assert tag["last_updated"] == "2023-10-04T00:00:00Z"
    assert missing.status_code == 404
    assert missing.json()["message"] == "httperror 404: tag '2.1.0-cuda12.1-cudnn8' not found"
    assert official.status_code == 404, "only the catalogue's images are published here"


# ---------------------------------------------------------------------------------------------- our provider


def _launch(vast: VastCloud, offer: Offer) -> LaunchRequest:
    return LaunchRequest(offer=offer, image=IMAGE, disk_gb=20,
                         label="dumont-train", ssh_public_keys=[vast.attached_public_key])


async def _faults(vast: VastCloud, action: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=vast.url, headers={"Authorization": f"Bearer {vast.key}"},
                                 timeout=10) as http:
        response = await http.post(f"/_dumont/faults/{action}", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_provider_retries_a_429_honouring_retry_after(vast: VastCloud) -> None:
    """Given one 429 with Retry-After: 1, the search waits about a second and then succeeds."""
    armed = await _faults(vast, "throttle", {"count": 1, "retry_after": 1})
    assert armed["throttle_left"] == 1
    started = time.monotonic()
    offers = await vast.market().search_offers(SEED_QUERY)
    assert offers and time.monotonic() - started >= 0.9
    assert vast.emulator.faults.throttle_left == 0, "the 429 was served and retried past"
    assert [o.region_rank for o in offers] == sorted(o.region_rank for o in offers)
    assert all(o.price_per_hour <= 0.5 and o.gpu_ram_gb >= 8 and o.reliability >= 0.98 for o in offers)


async def test_a_wrong_key_names_where_it_came_from_never_the_key(vast: VastCloud, tmp_path: Path) -> None:
    """A refused key stops with a message that names its file, and shows neither the key nor the real one."""
    wrong = tmp_path / "wrong_key"
    wrong.write_text("wrong-key-0123456789abcdef\n")
    wrong.chmod(0o600)
    with pytest.raises(ProviderAuthError) as error:
        await vast.market(wrong).search_offers(SEED_QUERY)
    message = str(error.value)
    assert f"the key in {wrong}" in message and "401" in message
    assert "wrong-key-0123456789abcdef" not in message and vast.key not in message


async def test_a_vanished_offer_moves_on_to_the_next_one(vast: VastCloud) -> None:
    """Given the best offer vanishing between search and rent, the next one is rented and reachable by SSH."""
    market = vast.market()
    offers = await market.search_offers(SEED_QUERY)
    await _faults(vast, "vanish", {"next": 1})
    instance = await rent_first_available(market, offers, lambda o: _launch(vast, o), max_attempts=3)
    assert instance.machine_id == offers[1].machine_id
    assert instance.state is InstanceState.RUNNING and instance.label == "dumont-train"
    assert offers[0].offer_id not in [o.offer_id for o in await market.search_offers(SEED_QUERY)]
    assert await _ssh_to(vast, instance, 'echo "$DUMONT_HOST"') == f"vast-{instance.instance_id}"
    assert [i.instance_id for i in await market.list("dumont-train")] == [instance.instance_id]


async def _ssh_to(vast: VastCloud, instance: Instance, command: str) -> str:
    assert instance.ssh_host and instance.ssh_port
    return await vast.ssh(f"vast-{instance.instance_id}", instance.ssh_host, instance.ssh_port, instance.ssh_user,
                          command)


async def test_outbid_and_offline_are_reported_as_such(vast: VastCloud) -> None:
    """An outbid instance is OUTBID with its files kept; a killed one is OFFLINE; a destroyed one TERMINATED."""
    market = vast.market()
    offers = await market.search_offers(SEED_QUERY)
    first, second = [await market.create(_launch(vast, o)) for o in offers[:2]]
    await _ssh_to(vast, first, 'echo kept > "$DUMONT_WORKSPACE/model.pt"')

    host = vast.cloud.pool.get(f"vast-{first.instance_id}")
    record = await vast.emulator.fault("outbid", host)
    assert record["state"] == "stopped" and record["vast"]["intended_status"] == "running"
    outbid = await market.get(first.instance_id)
    assert outbid.state is InstanceState.OUTBID and outbid.state.is_lost
    assert (host.workspace / "model.pt").read_text() == "kept\n"

    await _faults(vast, "offline", {"instance_id": int(second.instance_id)})
    assert (await market.get(second.instance_id)).state is InstanceState.OFFLINE

    for instance in (first, second):
        await market.destroy(instance.instance_id)
        assert (await market.get(instance.instance_id)).state is InstanceState.TERMINATED
    await market.destroy(first.instance_id)  # already gone: fine
    assert [h for h in vast.cloud.pool.hosts() if h.provider == "vast"] == []


async def test_a_new_instance_provisions_then_loads_then_runs(vast: VastCloud) -> None:
    """With a provisioning delay, a new instance is PENDING (actual_status null, then loading) and its host is not
    started before the delay has passed; then it is RUNNING, reachable as root, and its onstart has run."""
    vast.emulator.delay = 2.0
    market = vast.market()
    request = _launch(vast, (await market.search_offers(SEED_QUERY))[0])
    instance = await market.create(replace(request, onstart='echo "booted as $USER" >> "$DUMONT_WORKSPACE/boots"'))
    host = vast.cloud.pool.get(f"vast-{instance.instance_id}")
    assert instance.state is InstanceState.PENDING
    assert instance.raw_state.split()[0] in ("actual_status=None", "actual_status=loading")
    assert (host.state, host.pid, instance.ssh_port) == (HostState.STOPPED, None, None), "nothing answers yet"
    assert vast.emulator.boot_timers.is_armed(int(instance.instance_id))

    async def is_running() -> None:
        assert (await market.get(instance.instance_id)).state is InstanceState.RUNNING

    await eventually(is_running, timeout=10, retry_on=(AssertionError,))
    running = await market.get(instance.instance_id)
    assert (running.ssh_host, running.ssh_port) == (host.address, host.port) and host.address != "127.0.0.1"
    assert await _ssh_to(vast, running, "whoami") == "root"

    async def booted() -> None:
        assert (host.workspace / "boots").read_text() == "booted as root\n"

    await eventually(booted, timeout=10, retry_on=(AssertionError, FileNotFoundError))


async def test_an_instance_reads_loading_while_its_host_is_starting(vast: VastCloud) -> None:
    """The delay has passed and the host's sshd is starting: a read in that window says loading, never exited
    (a controller polling then took the instance for outbid and destroyed it, once per boot, in phase)."""
    vast.emulator.delay = 0.5
    market = vast.market()
    pool, real_start = vast.cloud.pool, vast.cloud.pool.start
    starting, go_on = asyncio.Event(), asyncio.Event()

    async def held_start(name: str, *, new_address: bool = False) -> Any:
        starting.set()
        await go_on.wait()
        return await real_start(name, new_address=new_address)

    pool.start = held_start  # type: ignore[method-assign]
    try:
        instance = await market.create(_launch(vast, (await market.search_offers(SEED_QUERY))[0]))
        await asyncio.wait_for(starting.wait(), 10)
        during = await market.get(instance.instance_id)
        assert during.state is InstanceState.PENDING, during.raw_state
        assert during.raw_state.split()[0] == "actual_status=loading", during.raw_state
    finally:
        go_on.set()
        pool.start = real_start  # type: ignore[method-assign]

    async def is_running() -> None:
        assert (await market.get(instance.instance_id)).state is InstanceState.RUNNING

    await eventually(is_running, timeout=10, retry_on=(AssertionError,))


async def test_a_stop_or_destroy_while_booting_cancels_the_boot(vast: VastCloud) -> None:
    """An instance stopped while it loads never starts its host; one destroyed while it loads leaves nothing."""
    vast.emulator.delay = 30.0
    market = vast.market()
    first, second = [await market.create(_launch(vast, o)) for o in (await market.search_offers(SEED_QUERY))[:2]]
    await market.stop(first.instance_id)
    await market.destroy(second.instance_id)
    timers = vast.emulator.boot_timers
    assert not timers.is_armed(int(first.instance_id)) and not timers.is_armed(int(second.instance_id))
    assert (await market.get(first.instance_id)).state is InstanceState.STOPPED
    assert vast.cloud.pool.get(f"vast-{first.instance_id}").state is HostState.STOPPED
    assert (await market.get(second.instance_id)).state is InstanceState.TERMINATED
    assert f"vast-{second.instance_id}" not in [h.name for h in vast.cloud.pool.hosts()]


async def test_a_reboot_boots_again_and_may_move_the_instance(vast: VastCloud) -> None:
    """A reboot stops the container, loads again (onstart runs again) and comes back on a new address and port."""
    market = vast.market()
    request = _launch(vast, (await market.search_offers(SEED_QUERY))[0])
    instance = await market.create(replace(request, onstart='echo boot >> "$DUMONT_WORKSPACE/boots"'))
    host = vast.cloud.pool.get(f"vast-{instance.instance_id}")
    before = (instance.ssh_host, instance.ssh_port)
    await _ssh_to(vast, instance, 'echo kept > "$DUMONT_WORKSPACE/model.pt"')
    cli = await vast.vastai("reboot", "instance", instance.instance_id, "--raw")
    assert not cli.stderr
    after = await market.get(instance.instance_id)
    assert after.state is InstanceState.RUNNING and (after.ssh_host, after.ssh_port) != before
    assert await _ssh_to(vast, after, 'cat "$DUMONT_WORKSPACE/model.pt"') == "kept"

    async def booted_twice() -> None:
        assert (host.workspace / "boots").read_text() == "boot\nboot\n"

    await eventually(booted_twice, timeout=10, retry_on=(AssertionError, FileNotFoundError))


async def test_instances_still_booting_boot_after_a_restart_of_the_local_cloud(vast: VastCloud) -> None:
    """The local cloud stops while an instance loads; started again on the same state dir, it finishes booting."""
    vast.emulator.delay = 30.0
    market = vast.market()
    instance = await market.create(_launch(vast, (await market.search_offers(SEED_QUERY))[0]))
    await market.close()
    vast.markets.remove(market)
    await vast.emulator.stop()
    await vast.cloud.pool.shutdown()

    cloud = LocalCloud(vast.cloud.state_dir)
    emulator = VastEmulator(cloud, delay=0.5)
    vast.url = await emulator.start()
    try:
        assert emulator.boot_timers.is_armed(int(instance.instance_id))
        again = vast.market()

        async def is_running() -> None:
            assert (await again.get(instance.instance_id)).state is InstanceState.RUNNING

        await eventually(is_running, timeout=10, retry_on=(AssertionError,))
    finally:
        await emulator.stop()
        await cloud.pool.shutdown()


async def test_provider_account_keys_reach_new_instances_and_attach_reaches_old_ones(vast: VastCloud) -> None:
    """add_account_key is for instances rented later; attach_keys gives an existing one the key (twice is fine)."""
    market = vast.market()
    user_key = (layout.user_key(vast.cloud.state_dir).with_suffix(".pub")).read_text().strip()
    offers = await market.search_offers(SEED_QUERY)
    old = await market.create(replace(_launch(vast, offers[0]), ssh_public_keys=[]))
    assert await market.account_keys() == [user_key]
    await market.add_account_key(vast.attached_public_key)
    await market.add_account_key(vast.attached_public_key)  # held already: nothing is sent
    assert await market.account_keys() == [user_key, vast.attached_public_key]
    new = await market.create(replace(_launch(vast, offers[1]), ssh_public_keys=[]))
    assert await _ssh_to(vast, new, "whoami") == "root"
    with pytest.raises(AuthRefused):
        await _ssh_to(vast, old, "true")
    await market.attach_keys(old.instance_id, [vast.attached_public_key])
    await market.attach_keys(old.instance_id, [vast.attached_public_key])
    assert await _ssh_to(vast, old, "whoami") == "root"
    assert len(vast.emulator.instances[int(old.instance_id)].keys) == 1


async def test_provider_sees_a_failed_pull_as_failed_and_the_registry_agrees(vast: VastCloud) -> None:
    """An unpublished image is FAILED (not lost) with Docker's message; image_exists says False for it beforehand."""
    registry = RegistryEmulator()
    registry_url = await registry.start()
    try:
        assert await image_exists(IMAGE, registry_url) is True
        assert await image_exists("pytorch/pytorch:2.1.0-cuda12.1-cudnn8", registry_url) is False
    finally:
        await registry.stop()
    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await image_exists(IMAGE, registry_url, timeout_seconds=5)  # stopped: nothing listens there now

    market = vast.market()
    request = replace(_launch(vast, (await market.search_offers(SEED_QUERY))[0]),
                      image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8")
    instance = await market.create(request)
    assert instance.state is InstanceState.FAILED and instance.state.is_failed and not instance.state.is_lost
    assert instance.status_message is not None and "manifest for pytorch/pytorch:2.1.0-cuda12.1-cudnn8 not found" \
        in instance.status_message


# ---------------------------------------------------------------------------------------------- through the daemon


def dumont(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The dumont CLI as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dumont", *args], check=False, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, env=env)


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A state dir for `dumont local up`, with no provisioning delay; always brought down."""
    state = tmp_path / "daemon state"
    env = {**os.environ, "DUMONT_LOCAL_VAST_DELAY_SECONDS": "0"}
    env.pop("VAST_API_KEY", None)
    yield state, env
    dumont("local", "down", "--state-dir", str(state), env=env)
    if (state / "cloud_id").exists():
        assert procs.marked_processes((state / "cloud_id").read_text().strip(), state / "hosts") == set()


def test_local_up_serves_vast_and_offers_and_outbid_work_from_the_cli(daemon_env: tuple[Path, dict[str, str]]
                                                                      ) -> None:
    """`dumont local up --json` gives vast_url; `dumont offers` lists in order; `dumont local outbid` outbids."""
    state, env = daemon_env
    up = dumont("local", "up", "--state-dir", str(state), "--json", env=env)
    assert up.returncode == 0, up.stderr
    ready = json.loads(up.stdout)
    url = ready["vast_url"]
    assert httpx.get(f"{ready['registry_url']}/v2/namespaces/pytorch/repositories/pytorch/tags/"
                     "2.1.0-cuda12.1-cudnn8-runtime", timeout=30).status_code == 200
    key_file = state / "vast_api_key"
    assert url.startswith("http://127.0.0.1:") and key_file.stat().st_mode & 0o077 == 0

    listed = dumont("offers", "--state-dir", str(state), "--json", "--limit", "6", env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    offers = data["offers"]
    assert data["criteria"]["regions"] == ["TH", "VN", "JP", "EU"] and data["criteria"]["max_price_per_hour"] == 0.5
    assert len(offers) == 6
    assert offers == sorted(offers, key=lambda o: (o["region_rank"], o["price_per_hour"], -o["reliability"]))
    assert all(o["price_per_hour"] <= 0.5 and o["reliability"] >= 0.98 for o in offers)
    human = dumont("offers", "--state-dir", str(state), "--limit", "3", env=env)
    assert human.returncode == 0 and offers[0]["offer_id"] in human.stdout

    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    body = {"client_id": "me", "image": IMAGE, "disk": 10.0, "price": offers[0]["min_bid"], "label": "dumont-x"}
    rented = httpx.put(f"{url}/api/v0/asks/{offers[0]['offer_id']}/", json=body, headers=headers, timeout=30)
    assert rented.headers["Content-Type"] == "application/json"
    instance_id = rented.json()["new_contract"]

    outbid = dumont("local", "outbid", str(instance_id), "--state-dir", str(state), "--json", env=env)
    assert outbid.returncode == 0, outbid.stderr
    assert json.loads(outbid.stdout)["state"] == "stopped"
    row = httpx.get(f"{url}/api/v0/instances/{instance_id}/", headers=headers, timeout=30).json()["instances"]
    assert (row["actual_status"], row["intended_status"], row["is_bid"]) == ("stopped", "running", True)
    on_demand = httpx.put(f"{url}/api/v0/asks/{offers[1]['offer_id']}/", json={**body, "price": None},
                          headers=headers, timeout=30).json()["new_contract"]
    refused = dumont("local", "outbid", f"vast-{on_demand}", "--state-dir", str(state), env=env)
    assert refused.returncode == 2 and "only interruptible instances are outbid" in refused.stderr


async def test_copy_between_takes_files_off_a_stopped_instance_and_says_when_it_is_done(vast: VastCloud) -> None:
    """Vast's copy (PUT /commands/copy_direct/, as `vastai copy`) works on a paused instance: its disk is there."""
    market = vast.market()
    offers = await market.search_offers(SEED_QUERY)
    old, new = (await market.create(_launch(vast, offers[0])), await market.create(_launch(vast, offers[1])))
    old_host = vast.cloud.pool.get(f"vast-{old.instance_id}")
    (old_host.workspace / "data").mkdir(exist_ok=True)
    (old_host.workspace / "data" / "late.bin").write_bytes(b"written after the last pass")
    await market.stop(old.instance_id)
    await market.copy_between(old.instance_id, new.instance_id, "/workspace/", "/workspace/.dumont/salvage/2/")

    async def done() -> None:
        assert (await market.get(new.instance_id)).status_message == f"copy from {old.instance_id}: done"

    await eventually(done, timeout=20, retry_on=(AssertionError,))
    new_host = vast.cloud.pool.get(f"vast-{new.instance_id}")
    assert (new_host.workspace / ".dumont/salvage/2/data/late.bin").read_bytes() == b"written after the last pass"
    with pytest.raises(ProviderRequestError, match="only under /workspace"):
        await market.copy_between(old.instance_id, new.instance_id, "/etc/", "/workspace/x/")
    with pytest.raises(ProviderRequestError, match="must be running"):
        await market.copy_between(new.instance_id, old.instance_id, "/workspace/", "/workspace/x/")


async def test_the_per_endpoint_rate_limit_refuses_in_plain_text_and_our_pacing_never_meets_it(
        vast: VastCloud) -> None:
    """Given Vast's rate limit (a minimum interval per endpoint and key, answered with a plain-text 429 and no
    Retry-After), a client that does not pace itself meets it; ours, paced at that interval, never does."""
    vast.emulator.min_interval = 0.3
    paced = VastMarket(VastClient(vast.url, load_api_key(vast.cloud.state_dir / "vast_api_key"), min_interval=0.3))
    vast.markets.append(paced)
    started = time.monotonic()
    for _ in range(5):
        assert await paced.list() == []
    assert vast.emulator.too_frequent == 0, "a paced client is never refused"
    assert time.monotonic() - started >= 4 * 0.3
    async with httpx.AsyncClient(base_url=vast.url, headers={"Authorization": f"Bearer {vast.key}"}) as raw:
        first = await raw.get("/api/v0/instances/")
        second = await raw.get("/api/v0/instances/")
        other = await raw.get("/api/v0/instances/filters/")  # another endpoint: its own interval
    assert first.status_code == 200 and other.status_code == 200
    assert second.status_code == 429 and "Retry-After" not in second.headers
    assert second.text == "API requests too frequent: endpoint threshold=0.3"
    assert vast.emulator.too_frequent == 1
