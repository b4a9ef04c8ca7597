"""Vast instance payloads map to our states: every documented word, odd ones, missing and malformed fields."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.providers.base import InstanceState
from dumont.providers.vast.states import country_code, instance_from_payload, instance_state, ssh_address

S = InstanceState

# (actual_status, intended_status, cur_state, is_bid) -> our state
STATE_TABLE: list[tuple[Any, Any, Any, Any, InstanceState]] = [
    (None, "running", "running", False, S.PENDING),  # provisioning: actual_status is null
    ("created", "running", "running", False, S.PENDING),
    ("loading", "running", "running", True, S.PENDING),
    ("scheduling", "running", "running", False, S.PENDING),
    ("rebooting", "running", "running", False, S.PENDING),
    ("running", "running", "running", False, S.RUNNING),
    ("running", "running", "running", True, S.RUNNING),
    ("running", "stopped", "running", False, S.STOPPING),  # asked to stop, not yet stopped
    ("running", "frozen", "running", False, S.STOPPING),
    ("loading", "stopped", "running", False, S.STOPPING),
    ("stopped", "stopped", "stopped", False, S.STOPPED),
    ("stopped", "stopped", "stopped", True, S.STOPPED),  # an interruptible the renter stopped is not outbid
    ("stopped", "running", "stopped", True, S.OUTBID),  # the market took it: intent unchanged
    ("exited", "running", "running", True, S.OUTBID),
    ("stopped", "running", "stopped", False, S.STOPPED),  # on demand is never outbid
    ("exited", "running", "running", False, S.STOPPED),
    ("frozen", "frozen", "running", False, S.STOPPED),
    ("offline", "running", "running", False, S.OFFLINE),
    ("offline", "running", "running", True, S.OFFLINE),
    ("unknown", "running", "running", False, S.UNKNOWN),
    ("running", "running", "unloaded", False, S.TERMINATED),  # contract released
    ("stopped", "stopped", "unloaded", True, S.TERMINATED),
    ("Running", "RUNNING", "running", False, S.RUNNING),  # case and spaces are not meaning
    (" offline ", "running", "running", False, S.OFFLINE),
    ("hibernating", "running", "running", False, S.UNKNOWN),  # a word we have never seen
    ("destroyed", "destroyed", None, False, S.UNKNOWN),
    (42, "running", "running", False, S.UNKNOWN),  # the wrong type
    (["running"], None, None, False, S.UNKNOWN),
]


@pytest.mark.parametrize(("actual", "intended", "cur", "is_bid", "expected"), STATE_TABLE)
def test_every_vendor_state_maps_to_ours(actual: Any, intended: Any, cur: Any, is_bid: Any,
                                         expected: InstanceState) -> None:
    """Each combination of Vast's three status words gives exactly one of our states."""
    payload = {"id": 1, "actual_status": actual, "intended_status": intended, "cur_state": cur, "is_bid": is_bid}
    assert instance_state(payload) is expected


def test_outbid_needs_is_bid_to_be_true_not_truthy() -> None:
    """A malformed is_bid ("yes", 1) is not taken as interruptible: the instance is merely stopped."""
    for flag in ("yes", 1, None):
        payload = {"actual_status": "stopped", "intended_status": "running", "is_bid": flag}
        assert instance_state(payload) is S.STOPPED


# What the local cloud's emulator sends for a running interruptible (the shape the CLI reads, cloud-apis §1.6).
RECORDED_ROW: dict[str, Any] = {
    "id": 30000002, "machine_id": 35814, "host_id": 112233, "bundle_id": 16807216, "label": "dumont-train",
    "actual_status": "running", "intended_status": "running", "cur_state": "running", "next_state": "running",
    "status_msg": "success, running pytorch/pytorch:2.1.0-cuda12.1-cudnn8", "image_uuid": "pytorch/pytorch",
    "image_runtype": "ssh_direc ssh_proxy", "extra_env": [], "is_bid": True, "min_bid": 0.3, "dph_total": 0.3107,
    "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "geolocation": "Hanoi, VN", "start_date": 1.8e9,
    "public_ipaddr": "127.31.7.9", "ssh_host": "127.31.7.9", "ssh_port": 40022,
    "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40022"}]},
}


def test_a_full_row_becomes_a_complete_record() -> None:
    """Given a full instance row, every field we keep is read from it."""
    instance = instance_from_payload(RECORDED_ROW)
    assert (instance.provider, instance.instance_id, instance.state) == ("vast", "30000002", S.RUNNING)
    assert (instance.ssh_host, instance.ssh_port, instance.ssh_user) == ("127.31.7.9", 40022, "root")
    assert (instance.label, instance.price_per_hour, instance.country) == ("dumont-train", 0.3107, "VN")
    assert (instance.machine_id, instance.gpu_name) == ("35814", "RTX 4090")
    assert instance.status_message == RECORDED_ROW["status_msg"]
    assert instance.raw_state == "actual_status=running intended_status=running cur_state=running interruptible"


def test_a_real_vast_row_logs_in_as_root_through_the_proxy() -> None:
    """A row without ports (Vast's proxy SSH) gives root@ssh_host:ssh_port; a user named in a row is not read."""
    row = {"id": 7, "actual_status": "running", "intended_status": "running", "ssh_host": "ssh4.vast.ai",
           "ssh_port": 12345, "image_runtype": "ssh_proxy", "ssh_user": "someone"}
    instance = instance_from_payload(row)
    assert (instance.ssh_host, instance.ssh_port, instance.ssh_user) == ("ssh4.vast.ai", 12345, "root")


@pytest.mark.parametrize("payload", [
    {},
    {"id": None},
    {"id": 5, "ports": "22:40022", "ssh_port": "not a port", "dph_total": "cheap", "machine_id": -3},
    {"id": 5, "ports": {"22/tcp": []}, "public_ipaddr": "1.2.3.4"},
    {"id": 5, "ports": {"22/tcp": [{"HostPort": None}]}, "public_ipaddr": "1.2.3.4"},
    {"id": 5, "ports": {"22/tcp": ["40022"]}, "public_ipaddr": "1.2.3.4"},
    {"id": 5, "geolocation": 7, "label": 3, "gpu_name": ["RTX"], "status_msg": {"a": 1}},
    {"id": 5, "dph_total": float("nan"), "ssh_port": float("inf"), "ssh_host": ""},
    {"id": 5, "dph_total": True, "machine_id": True},
])
def test_odd_payloads_never_raise(payload: dict[str, Any]) -> None:
    """Missing or malformed fields become None (and the state UNKNOWN or PENDING), never an exception."""
    instance = instance_from_payload(payload)
    assert instance.provider == "vast"
    assert instance.state in (S.UNKNOWN, S.PENDING)
    assert instance.ssh_port is None or instance.ssh_port > 0
    assert instance.price_per_hour is None or instance.price_per_hour == instance.price_per_hour  # not NaN


def test_ssh_address_follows_the_cli_rules() -> None:
    """The direct port 22 mapping wins; else ssh_host/ssh_port, one higher for jupyter images (vastai ssh-url)."""
    assert ssh_address({"public_ipaddr": "5.6.7.8", "ports": {"22/tcp": [{"HostPort": "41000"}]},
                        "ssh_host": "ssh1.vast.ai", "ssh_port": 2000}) == ("5.6.7.8", 41000)
    assert ssh_address({"ssh_host": "ssh1.vast.ai", "ssh_port": 2000}) == ("ssh1.vast.ai", 2000)
    assert ssh_address({"ssh_host": "ssh1.vast.ai", "ssh_port": "2000",
                        "image_runtype": "jupyter_proxy ssh_proxy"}) == ("ssh1.vast.ai", 2001)
    assert ssh_address({"ssh_host": "ssh1.vast.ai"}) == (None, None)


@pytest.mark.parametrize(("geolocation", "code"), [
    ("Bangkok, TH", "TH"), ("Texas, US", "US"), ("Spain, ES", "ES"), ("th", "TH"), ("", None), (None, None),
    ("X", None), ("Somewhere, 12", None), (3, None),
])
def test_country_is_the_last_two_letters(geolocation: Any, code: str | None) -> None:
    """The country code is the geolocation's last two letters, as the SDK reads it."""
    assert country_code(geolocation) == code


MANIFEST_UNKNOWN = ("Error response from daemon: manifest for pytorch/pytorch:2.1.0-cuda12.1-cudnn8 not found: "
                    "manifest unknown: manifest unknown")


@pytest.mark.parametrize(("actual", "message", "expected"), [
    ("created", MANIFEST_UNKNOWN, S.FAILED),  # what Vast shows for a tag that does not exist
    ("loading", MANIFEST_UNKNOWN, S.FAILED),
    (None, MANIFEST_UNKNOWN, S.FAILED),
    ("created", "Error response from daemon: pull access denied for me/private, repository does not exist or "
                "may require 'docker login': denied: requested access to the resource is denied", S.FAILED),
    ("loading", "failed to pull image docker.io/me/app:v1: unexpected EOF", S.FAILED),
    ("created", "Creating container", S.PENDING),  # still on its way
    ("loading", None, S.PENDING),
    ("running", MANIFEST_UNKNOWN, S.RUNNING),  # a stale message on a running container means nothing now
    ("stopped", MANIFEST_UNKNOWN, S.STOPPED),
    ("created", 42, S.PENDING),
])
def test_a_failed_pull_is_failed_not_pending(actual: Any, message: Any, expected: InstanceState) -> None:
    """A container left created or loading with Docker's pull error will never run: FAILED, which is not lost."""
    payload = {"id": 1, "actual_status": actual, "intended_status": "running", "cur_state": "running",
               "status_msg": message}
    state = instance_state(payload)
    assert state is expected
    assert state.is_failed == (expected is S.FAILED) and not (state.is_failed and state.is_lost)
    if expected is S.FAILED:
        assert instance_from_payload(payload).status_message == message
