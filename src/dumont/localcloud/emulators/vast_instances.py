"""The Vast emulator's instances: what was rented, and how Vast would describe it right now.

An instance's record holds what the renter chose and asked for (image, bid, intent, keys), when, and whether it
is still booting. Its status is derived on every read from that, the time and the real host behind it, so
nothing drifts: a host killed with ``dumont local kill`` is reported ``offline`` at once.

=============================================  ===============  ===============  =========
host / record                                   actual_status    intended_status  cur_state
=============================================  ===============  ===============  =========
gone from the pool, or killed                   offline          as asked         running
outbid (interruptible)                          stopped          running          stopped
stopped on request                              stopped          stopped          stopped
image not published, less than delay/2          null             running          running
image not published, then for ever              created          running          running
booting, less than delay/2 since (re)start      null             running          running
booting, until its host has started             loading          running          running
stopped behind Vast's back (dumont local stop)  exited           running          running
running (or partitioned: Vast cannot tell)      running          running          running
=============================================  ===============  ===============  =========

``delay`` is ``DUMONT_LOCAL_VAST_DELAY_SECONDS`` (tests set it to 0): a booting instance's host starts when it
has passed (``vast_boot``), so the row says ``running`` only once its sshd answers. An image that is not
published (not in :mod:`~dumont.localcloud.emulators.vast_images`) fails its pull: the row says ``created`` with
Docker's "manifest ... not found" as ``status_msg``, as Vast shows a failed pull (research/real-instances.md
B4), and its host is never started.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dumont.errors import LocalCloudError
from dumont.localcloud.emulators import vast_images
from dumont.localcloud.emulators.vast_http import Refused, number, text
from dumont.localcloud.emulators.vast_keys import AccountKeys
from dumont.localcloud.emulators.vast_market import priced
from dumont.localcloud.hosts import HostState, LocalHost
from dumont.transport.keys import write_private


@dataclass
class VastInstance:
    """One rented instance, as the emulator remembers it (persisted across daemon restarts)."""

    id: int
    host: str  # the pool host standing in for the machine
    offer: dict[str, Any]  # the offer row as it was rented (priced for its type)
    image: str
    disk: float
    label: str | None
    runtype: str
    bid_price: float | None  # None: on demand
    env: dict[str, str]
    onstart: str | None
    created_at: float
    started_at: float  # the last (re)start: the provisioning delay counts from here
    intended: str = "running"
    outbid: bool = False
    keys: dict[str, str] = field(default_factory=dict)  # attached key id -> public key
    booting: bool = False  # pulling and booting: its host starts when the delay has passed (vast_boot)
    boots: int = 0  # how often its host has been started (a restart may come back on another address)

    @property
    def is_bid(self) -> bool:
        """Rented as an interruptible (bid) instance."""
        return self.bid_price is not None

    @property
    def can_pull(self) -> bool:
        """Its image is published: without it the container is created but never runs."""
        return vast_images.find(self.image) is not None


def from_create_body(instance_id: int, offer: dict[str, Any], body: dict[str, Any]) -> VastInstance:
    """The record of a rent of ``offer`` with the CLI's create body (cloud-apis.md §1.5); 400 when it is bad."""
    image, price, disk = text(body.get("image")), number(body, "price"), number(body, "disk") or 10.0
    if image is None:
        raise Refused(400, "invalid_args", "image is required")
    raw_env = body.get("env")
    env = raw_env if isinstance(raw_env, dict) else {}
    now = time.time()
    return VastInstance(
        id=instance_id, host=f"vast-{instance_id}", image=image, disk=disk,
        offer=priced(offer, "on-demand" if price is None else "bid", disk),
        label=text(body.get("label")), runtype=str(body.get("runtype") or "ssh"), bid_price=price,
        onstart=text(body.get("onstart")),
        # The CLI turns "-p 8080:8080" into a key of its own; only real variables are environment.
        env={str(k): str(v) for k, v in env.items() if not str(k).startswith("-")},
        created_at=now, started_at=now,
        # A bid under the market's minimum loses at once: rented, but outbid until the bid is raised.
        outbid=price is not None and price < float(offer["min_bid"]))


def status(instance: VastInstance, host: LocalHost | None, now: float, delay: float) -> tuple[str | None, str, str]:
    """``(actual_status, cur_state, status_msg)`` for the instance now (see the module's table)."""
    if host is None or host.state == HostState.KILLED:
        return "offline", "running", "The machine is offline."
    if instance.outbid:
        return "stopped", "stopped", "Outbid: a higher bid took this machine; your data is kept."
    if instance.intended == "stopped":
        return "stopped", "stopped", "Stopped on request."
    return _container(instance, host, now - instance.started_at, delay)


def _container(instance: VastInstance, host: LocalHost, elapsed: float, delay: float) -> tuple[str | None, str, str]:
    """The container of an instance that is meant to run, ``elapsed`` seconds after its last (re)start."""
    if instance.booting or not instance.can_pull:
        if elapsed < delay / 2:
            return None, "running", "Provisioning."
        if not instance.can_pull:
            return "created", "running", vast_images.pull_error(instance.image)  # and so it stays (B4)
        return "loading", "running", f"Loading image {instance.image}."  # until its host is up
    if host.state == HostState.STOPPED:
        return "exited", "running", "The container exited."
    return "running", "running", f"success, running {instance.image}"


def row(instance: VastInstance, host: LocalHost | None, now: float, delay: float) -> dict[str, Any]:
    """The instance as ``show instance(s)`` returns it (the fields the CLI and our provider read, and more)."""
    actual, cur_state, message = status(instance, host, now, delay)
    offer = instance.offer
    port = host.port if host is not None else 0
    address = host.address if host is not None else "127.0.0.1"
    dph = (instance.bid_price if instance.is_bid else offer["dph_base"]) or 0.0
    storage = float(offer["storage_cost"]) * instance.disk / 720.0
    data = {key: offer.get(key) for key in (
        "machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram", "gpu_total_ram", "cpu_name", "cpu_cores",
        "cpu_cores_effective", "cpu_ram", "inet_up", "inet_down", "reliability2", "geolocation", "cuda_max_good",
        "driver_version", "min_bid", "dph_base", "storage_cost", "verification", "dlperf", "total_flops")}
    data.update({
        "id": instance.id, "bundle_id": offer["id"], "label": instance.label,
        "actual_status": actual, "intended_status": instance.intended, "cur_state": cur_state,
        "next_state": instance.intended, "status_msg": message,
        "image_uuid": instance.image, "image_runtype": instance.runtype, "image_args": [],
        "onstart": instance.onstart, "extra_env": [[k, v] for k, v in instance.env.items()],
        "is_bid": instance.is_bid, "dph_total": round(dph + storage, 4), "disk_space": instance.disk,
        "disk_usage": 0.0, "gpu_util": 0.0, "cpu_util": 0.0, "start_date": instance.created_at,
        "uptime_mins": round(max(0.0, now - instance.started_at) / 60, 2) if actual == "running" else 0.0,
        # The host is a real sshd on its own loopback address: every way the CLI finds SSH leads to it (as
        # root, the login of Vast's images). It has no port until it first starts.
        "public_ipaddr": address, "ssh_host": address, "ssh_port": port or None, "ssh_idx": "0",
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]} if port else {},  # noqa: S104
        "direct_port_start": port, "direct_port_end": port, "machine_dir_ssh_port": port,
    })
    return data


@dataclass
class Saved:
    """What the emulator keeps across daemon restarts: instances, the next id, the account's keys."""

    instances: dict[int, VastInstance]
    next_id: int
    account_keys: AccountKeys | None  # None: nothing saved yet (a new account)


def save(path: Path, saved: Saved) -> None:
    """Persist every instance record and the account's keys (atomically)."""
    data: dict[str, Any] = {"next_id": saved.next_id, "instances": [asdict(i) for i in saved.instances.values()]}
    if saved.account_keys is not None:
        data["account_keys"] = saved.account_keys.as_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(data, indent=1) + "\n")


def load(path: Path, first_id: int) -> Saved:
    """The persisted records (no instances, ``first_id`` and no account keys when nothing was saved)."""
    try:
        data = json.loads(path.read_text())
        instances = {int(i["id"]): VastInstance(**i) for i in data.get("instances", [])}
        keys = data.get("account_keys")
        return Saved(instances, int(data.get("next_id", first_id)),
                     None if keys is None else AccountKeys.from_json(keys))
    except FileNotFoundError:
        return Saved({}, first_id, None)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LocalCloudError(f"the Vast emulator's records in {path} cannot be read ({exc})",
                              hint="move the file away to start with no Vast instances") from exc
