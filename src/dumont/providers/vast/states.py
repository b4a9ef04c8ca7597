"""Vast.ai instance payloads → :class:`~dumont.providers.base.Instance`, never raising on odd input.

Vast describes an instance with three words (cloud-apis.md §1.6): ``actual_status`` (the container: null while
provisioning, created, loading, running, stopped, frozen, exited, rebooting, unknown, offline),
``intended_status`` (what the renter asked for: running, stopped, frozen) and ``cur_state`` (the machine
contract: running, stopped, unloaded). Our state comes from them in this order:

=====================================================  ======================================================
vendor words                                           our state
=====================================================  ======================================================
cur_state unloaded                                     TERMINATED (the contract is released: destroyed)
actual offline                                         OFFLINE
actual stopped/exited, intended running, interruptible OUTBID (assumption, see below)
actual stopped/exited/frozen (otherwise)               STOPPED
actual running, intended stopped/frozen                STOPPING
actual running                                         RUNNING
actual null/created/loading, status_msg a pull error   FAILED (the image cannot be pulled: it never runs)
actual null/created/loading/rebooting, intended        STOPPING
  stopped/frozen
actual null/created/loading/scheduling/rebooting       PENDING
actual unknown, or any word not listed here            UNKNOWN
=====================================================  ======================================================

Outbid: Vast documents that an outbid interruptible instance is *stopped* with its disk kept, and that the
renter's intent is unchanged; it does not document the exact fields. We assume (cloud-apis.md §1.10) that an
interruptible (``is_bid``) instance whose container is ``stopped`` (or ``exited``, as some third-party clients
report outbid instances) while ``intended_status`` is still ``running`` was stopped by the market, not by its
renter: that is OUTBID. A crashed interruptible container looks the same and is reported OUTBID too; both are
lost with their disk kept, so failover treats them alike. The local cloud's emulator reports an outbid instance
as stopped/running.

Failed pull: when Docker cannot pull the image (a tag that does not exist, a private repository), Vast leaves the
container ``created`` and shows Docker's error as ``status_msg``, e.g. "Error response from daemon: manifest for
IMAGE not found: manifest unknown: manifest unknown" (vast-cli tests/cli/test_machines_commands.py;
research/real-instances.md B4). Nothing will change that, so it is FAILED, not PENDING: a rental waiting for it
stops at once with the message, instead of waiting out its deadline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from dumont.providers.base import Instance, InstanceState

PROVIDER = "vast"

_PENDING = frozenset({None, "", "created", "loading", "scheduling", "rebooting", "provisioning"})
_HALTED = frozenset({"stopped", "exited"})
_STOP_INTENTS = frozenset({"stopped", "frozen"})
_SETTLED = {"offline": InstanceState.OFFLINE, "frozen": InstanceState.STOPPED}
_PULLING = frozenset({None, "", "created", "loading"})
# Docker's words for an image it cannot pull (registry and daemon errors), as Vast passes them on in status_msg.
_PULL_ERROR = re.compile(
    r"manifest (for \S+ )?(not found|unknown)|pull access denied|repository does not exist|"
    r"failed to pull|error pulling image|no such image|requested access to the resource is denied",
    re.IGNORECASE)


def is_pull_error(message: object) -> bool:
    """Whether a ``status_msg`` says the image could not be pulled."""
    return isinstance(message, str) and _PULL_ERROR.search(message) is not None


def _word(payload: Mapping[str, Any], key: str) -> str | None:
    """The status word under ``key``: None when absent or null, ``"?"`` when it is not even a string."""
    value = payload.get(key)
    if value is None:
        return None
    return value.strip().lower() if isinstance(value, str) else "?"


def instance_state(payload: Mapping[str, Any]) -> InstanceState:
    """Our state for one instance payload (see the module's table); UNKNOWN for anything unrecognised."""
    actual, intended = _word(payload, "actual_status"), _word(payload, "intended_status")
    if _word(payload, "cur_state") == "unloaded":
        return InstanceState.TERMINATED
    if actual in _PULLING and is_pull_error(payload.get("status_msg")):
        return InstanceState.FAILED
    if actual in _HALTED:
        outbid = intended == "running" and payload.get("is_bid") is True
        return InstanceState.OUTBID if outbid else InstanceState.STOPPED
    if actual == "running" or actual in _PENDING:
        if intended in _STOP_INTENTS:
            return InstanceState.STOPPING
        return InstanceState.RUNNING if actual == "running" else InstanceState.PENDING
    return _SETTLED.get(actual or "", InstanceState.UNKNOWN)


def raw_state(payload: Mapping[str, Any]) -> str:
    """The vendor's own words, for logs and reports."""
    words = [f"{key}={payload.get(key)}" for key in ("actual_status", "intended_status", "cur_state")]
    if payload.get("is_bid") is True:
        words.append("interruptible")
    return " ".join(words)


def instance_from_payload(payload: Mapping[str, Any]) -> Instance:
    """An Instance from one ``show instance(s)`` row; missing or malformed fields become None."""
    host, port = ssh_address(payload)
    machine = as_whole(payload.get("machine_id"))
    return Instance(
        provider=PROVIDER,
        instance_id=str(payload.get("id", "")),
        state=instance_state(payload),
        raw_state=raw_state(payload),
        ssh_host=host,
        ssh_port=port,
        ssh_user="root",  # Vast's images log in as root; its payloads name no user
        label=_text(payload.get("label")),
        price_per_hour=as_number(payload.get("dph_total")),
        country=country_code(payload.get("geolocation")),
        machine_id=None if machine is None else str(machine),
        gpu_name=_text(payload.get("gpu_name")),
        status_message=_text(payload.get("status_msg")),
    )


def terminated(instance_id: str, why: str) -> Instance:
    """The record of an instance Vast no longer knows."""
    return Instance(provider=PROVIDER, instance_id=instance_id, state=InstanceState.TERMINATED, raw_state=why)


def ssh_address(payload: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """Where SSH answers, the way ``vastai ssh-url`` finds it: the direct port 22 mapping, else the proxy."""
    ports = payload.get("ports")
    public = _text(payload.get("public_ipaddr"))
    if isinstance(ports, Mapping) and public:
        mappings = ports.get("22/tcp")
        if isinstance(mappings, list) and mappings and isinstance(mappings[0], Mapping):
            port = as_whole(mappings[0].get("HostPort"))
            if port is not None:
                return public, port
    host, port = _text(payload.get("ssh_host")), as_whole(payload.get("ssh_port"))
    if host is None or port is None:
        return None, None
    runtype = payload.get("image_runtype")
    if isinstance(runtype, str) and "jupyter" in runtype:
        port += 1  # the proxy's SSH port sits one above the reported one for jupyter images (vastai ssh-url)
    return host, port


def country_code(geolocation: object) -> str | None:
    """The country code of a geolocation such as ``"Bangkok, TH"`` (its last two letters), or None."""
    if not isinstance(geolocation, str):
        return None
    code = geolocation.strip()[-2:].upper()
    return code if len(code) == 2 and code.isalpha() else None


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def as_number(value: object) -> float | None:
    """A finite number from a JSON value (numbers may arrive as strings); None otherwise."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_whole(value: object) -> int | None:
    """A positive whole number (an id, a port) from a JSON value; None otherwise."""
    number = as_number(value)
    return int(number) if number is not None and number.is_integer() and number > 0 else None
