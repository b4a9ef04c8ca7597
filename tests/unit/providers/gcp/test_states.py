"""Every Compute Engine status maps to our enum; a preemption is told apart from a user stop; fields may be missing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dumont.providers.base import InstanceState
from dumont.providers.gcp import states

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 5, 1, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("status", "expected"), [
    ("PROVISIONING", InstanceState.PENDING),
    ("STAGING", InstanceState.PENDING),
    ("PENDING", InstanceState.PENDING),
    ("RUNNING", InstanceState.RUNNING),
    ("STOPPING", InstanceState.STOPPING),
    ("PENDING_STOP", InstanceState.STOPPING),
    ("SUSPENDING", InstanceState.STOPPING),
    ("DEPROVISIONING", InstanceState.STOPPING),
    ("SUSPENDED", InstanceState.STOPPED),
    ("STOPPED", InstanceState.STOPPED),
    ("TERMINATED", InstanceState.STOPPED),
    ("REPAIRING", InstanceState.OFFLINE),
    ("SOMETHING_NEW", InstanceState.UNKNOWN),
    ("", InstanceState.UNKNOWN),
    (None, InstanceState.UNKNOWN),
    (42, InstanceState.UNKNOWN),
])
def test_every_status_maps_to_our_state_with_unknown_as_the_default(status: object, expected: InstanceState) -> None:
    """Given a VM in each status GCE documents or its enum holds, then our state is the mapped one."""
    assert states.state_of({"status": status}) is expected


def test_the_table_covers_every_documented_status_and_enum_value() -> None:
    """Given the statuses of cloud-apis.md §2.3, then none of them falls through to UNKNOWN."""
    documented = {"PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "SUSPENDED", "REPAIRING",
                  "TERMINATED", "PENDING", "PENDING_STOP", "STOPPED", "DEPROVISIONING"}
    assert documented == set(states.STATUS_MAP)


@pytest.mark.parametrize(("vm", "preempted_at", "expected"), [
    ({"status": "TERMINATED"}, [], InstanceState.STOPPED),  # a user stop
    ({"status": "TERMINATED"}, [T0], InstanceState.PREEMPTED),  # never started since (no lastStartTimestamp)
    ({"status": "TERMINATED", "lastStartTimestamp": "2026-05-01T09:00:00.000+00:00"}, [T0],
     InstanceState.PREEMPTED),
    ({"status": "STOPPING", "lastStartTimestamp": "2026-05-01T09:00:00.000+00:00"}, [T0],
     InstanceState.PREEMPTED),  # on its way down after the notice
    # preempted at 10:00, restarted at 10:30 (-07:00 offsets as GCE writes them), then stopped by the user
    ({"status": "TERMINATED", "lastStartTimestamp": "2026-05-01T03:30:00.000-07:00"}, [T0],
     InstanceState.STOPPED),
    ({"status": "TERMINATED", "lastStartTimestamp": "2026-05-01T10:30:00Z"}, [T0, T1], InstanceState.PREEMPTED),
    ({"status": "RUNNING", "lastStartTimestamp": "2026-05-01T09:00:00Z"}, [T0], InstanceState.RUNNING),
    ({"status": "TERMINATED", "lastStartTimestamp": "not a time"}, [T0], InstanceState.PREEMPTED),
])
def test_a_preemption_after_the_last_start_is_preempted_else_stopped(
        vm: dict[str, Any], preempted_at: list[datetime], expected: InstanceState) -> None:
    """Given a down VM and the preemptions recorded for it, then only one after its last start counts."""
    assert states.state_of(vm, preempted_at) is expected


def test_preemption_times_come_only_from_preempted_operations() -> None:
    """Given a zone's operations, then only compute.instances.preempted ones with a readable time count."""
    operations = [
        {"operationType": "compute.instances.preempted", "insertTime": "2026-05-01T04:00:00.000-07:00"},
        {"operationType": "stop", "insertTime": "2026-05-01T12:00:00.000+00:00"},
        {"operationType": "compute.instances.preempted", "insertTime": "garbage"},
        {"operationType": "compute.instances.preempted"},
        {"operationType": "compute.instances.preempted", "insertTime": "2026-05-01T10:00:00"},  # no zone: unsafe
    ]
    assert states.preemption_times(operations) == [datetime(2026, 5, 1, 11, 0, tzinfo=UTC)]


def test_a_full_record_reads_ip_port_user_labels_and_message() -> None:
    """Given a running VM's JSON, then the record carries what SSH and the reports need."""
    vm = {
        "name": "standby-1", "status": "RUNNING", "statusMessage": "",
        "networkInterfaces": [{"networkIP": "192.0.2.2", "accessConfigs": [{"natIP": "34.1.2.3"}]}],
        "metadata": {"items": [{"key": "ssh-keys", "value": "\nguard:ssh-ed25519 AAAA k\nother:ssh-rsa BBBB"},
                               {"key": "dumont-ssh-port", "value": "2201"}]},
        "labels": {"role": "standby", "dumont-pair": "train"},
    }
    record = states.to_instance(vm)
    assert (record.provider, record.instance_id, record.state, record.raw_state) == (
        "gcp", "standby-1", InstanceState.RUNNING, "RUNNING")
    assert (record.ssh_host, record.ssh_port, record.ssh_user) == ("34.1.2.3", 2201, "guard")
    assert record.label == "dumont-pair=train,role=standby"
    assert record.status_message is None


@pytest.mark.parametrize("vm", [
    {},
    {"status": "TERMINATED", "networkInterfaces": []},
    {"networkInterfaces": [{}]},
    {"networkInterfaces": [{"accessConfigs": []}]},
    {"networkInterfaces": [{"accessConfigs": [{"name": "External NAT"}]}]},  # stopped: the IP was released
    {"metadata": {}, "labels": {}},
    {"metadata": {"items": [{"key": "dumont-ssh-port", "value": "99999"}, {"value": "no key"}]}},
    {"metadata": {"items": [{"key": "ssh-keys", "value": "no-colon-here"}]}},
])
def test_missing_fields_give_defaults_never_errors(vm: dict[str, Any]) -> None:
    """Given a VM record with fields missing or odd, then the record has defaults instead of raising."""
    record = states.to_instance(vm)
    assert record.ssh_host is None
    assert record.ssh_port == 22
    assert record.ssh_user == "root"
    assert record.label is None
    assert record.state in {InstanceState.UNKNOWN, InstanceState.STOPPED}


@pytest.mark.parametrize(("items", "expected"), [
    ([{"key": "ssh-keys", "value": "root:ssh-ed25519 AAAA\ndumont:ssh-ed25519 AAAA"}], "dumont"),
    ([{"key": "ssh-keys", "value": "root:ssh-ed25519 AAAA"}], "root"),
    ([{"key": "ssh-keys", "value": ":ssh-ed25519 AAAA\nbob:"}], "root"),
])
def test_the_login_user_comes_from_the_first_non_root_key(items: list[dict[str, str]], expected: str) -> None:
    """Given ssh-keys entries, then the record's user is the first that is not root (Google refuses root)."""
    assert states.ssh_user({"metadata": {"items": items}}) == expected


def test_a_preempted_record_says_when() -> None:
    """Given a preempted VM, then the record says so and when, in words a report can use."""
    record = states.to_instance({"name": "s", "status": "TERMINATED"}, [T0])
    assert record.state is InstanceState.PREEMPTED
    assert record.status_message == "preempted by Compute Engine at 2026-05-01T10:00:00+00:00"


def test_a_vm_the_api_no_longer_knows_is_terminated() -> None:
    """Given a 404, then the VM is TERMINATED, and a past preemption is named without guessing."""
    plain, after = states.gone("s"), states.gone("s", [T0])
    assert (plain.state, plain.raw_state) == (InstanceState.TERMINATED, "NOT_FOUND")
    assert after.state is InstanceState.TERMINATED
    assert "last preemption at 2026-05-01T10:00:00+00:00" in (after.status_message or "")


@pytest.mark.parametrize(("status", "expected"), [
    ("TERMINATED", True), ("STOPPING", True), ("PENDING_STOP", True), ("RUNNING", False), (None, False),
])
def test_only_a_vm_on_its_way_down_needs_its_operations_read(status: str | None, expected: bool) -> None:
    """Given a status, then the provider lists preemptions only when a preemption could explain it."""
    assert states.needs_preemption_check({"status": status}) is expected
