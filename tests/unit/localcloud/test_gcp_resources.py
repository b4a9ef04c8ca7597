"""The GCP emulator's pure parts: list filters, key parsing, resource JSON, operation timing, settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from dumont.errors import UsageError
from dumont.localcloud.emulators import gcp
from dumont.localcloud.emulators.gcp_resources import (
    Operation,
    Vm,
    load_record,
    parse_filter,
    save_record,
)

OP = {"operationType": "compute.instances.preempted", "status": "DONE",
      "targetLink": "http://127.0.0.1:1/compute/v1/projects/p/zones/z/instances/standby-1",
      "labels": {"dumont-pair": "train"}, "deletionProtection": False, "targetTags": ["web", "dumont-standby"]}


@pytest.mark.parametrize(("text", "expected"), [
    ('operationType="compute.instances.preempted" AND targetLink:instances/standby-1', True),
    ('operationType="compute.instances.preempted" AND targetLink:instances/other', False),
    ("operationType=stop", False),
    ('operationType != "stop"', True),
    ('(operationType = "compute.instances.preempted") (status = "DONE")', True),
    ('status = "DO*"', True),
    ('status = "D"', False),
    ("labels.dumont-pair = train", True),
    ("labels.missing:*", False),
    ("targetLink:*", True),
    ("deletionProtection = false", True),
    ("targetTags = dumont-standby", True),
    ("targetTags:dumont", True),
    ("targetTags = db", False),
    ("", True),
])
def test_filters_match_like_the_compute_api(text: str, expected: bool) -> None:
    """Given a filter in the forms the Compute API documents, then it selects what the API would."""
    assert parse_filter(text)(OP) is expected


@pytest.mark.parametrize("text", ["operationType", 'name = "x" OR name = "y" extra ~', "= value"])
def test_an_unparseable_filter_is_refused(text: str) -> None:
    """Given a filter this emulator does not understand, then it says so (the server answers 400)."""
    with pytest.raises(ValueError, match="cannot parse the filter"):
        parse_filter(text)


def test_a_spot_vm_reports_the_scheduling_gce_fixes_and_an_ip_only_when_up() -> None:
    """Given a spot VM, then GET shows no restart and TERMINATE; the NAT IP and port only while it has a host up."""
    body: dict[str, Any] = {"name": "s", "machineType": "zones/z/machineTypes/e2-medium",
                            "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"},
                            "networkInterfaces": [{"accessConfigs": [{"name": "External NAT"}]}],
                            "disks": [{"boot": True, "initializeParams": {"diskSizeGb": "20"}}]}
    vm = Vm("p", "z", "s", body, host="gcp-s")
    url = "http://127.0.0.1:1/compute/v1/projects/p"
    base = f"{url}/zones/z"
    up = vm.as_json(url, "RUNNING", address="127.0.0.7", ssh_port=2201)
    down = vm.as_json(url, "TERMINATED", address=None, ssh_port=None)
    assert up["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                                "automaticRestart": False, "onHostMaintenance": "TERMINATE", "preemptible": False}
    assert up["networkInterfaces"][0]["accessConfigs"][0]["natIP"] == "127.0.0.7"
    assert {"key": "dumont-ssh-port", "value": "2201"} in up["metadata"]["items"]
    assert "natIP" not in down["networkInterfaces"][0]["accessConfigs"][0]
    assert all(i["key"] != "dumont-ssh-port" for i in down["metadata"]["items"])
    assert up["disks"][0]["diskSizeGb"] == "20" and "initializeParams" not in up["disks"][0]
    assert up["machineType"] == f"{base}/machineTypes/e2-medium"
    assert isinstance(up["id"], str) and up["id"].isdigit()  # uint64 travels as a string
    assert (vm.is_spot, vm.termination_action) == (True, "STOP")
    assert up["networkInterfaces"][0]["network"] == f"{url}/global/networks/default"
    assert up["networkInterfaces"][0]["networkIP"] == down["networkInterfaces"][0]["networkIP"]  # internal IP kept


def test_fingerprints_follow_the_content_not_the_read() -> None:
    """Given a VM, then every read gives the same fingerprints; a change of metadata gives another; the port the
    emulator adds is not part of it, so a read-modify-write of what was read stays valid."""
    vm = Vm("p", "z", "s", {"metadata": {"items": [{"key": "a", "value": "1"}]}, "tags": {"items": ["t"]}},
            host="gcp-s")
    first = vm.as_json("u", "RUNNING", address="127.0.0.1", ssh_port=2201)
    again = vm.as_json("u", "TERMINATED", address=None, ssh_port=None)
    assert first["metadata"]["fingerprint"] == again["metadata"]["fingerprint"]
    assert first["fingerprint"] == again["fingerprint"]
    assert first["tags"] == {"items": ["t"], "fingerprint": again["tags"]["fingerprint"]}
    vm.body["metadata"] = {"items": [{"key": "a", "value": "2"}]}
    assert vm.as_json("u", "RUNNING", address=None, ssh_port=None)["metadata"]["fingerprint"] != \
        first["metadata"]["fingerprint"]


async def test_an_operation_is_running_until_its_work_is_done() -> None:
    """Given a zonal operation, then it is RUNNING until finished, then DONE; a failure is inside the DONE one."""
    operation = Operation("stop", "p", "z", "zones/z/instances/s", "1")
    url = "http://127.0.0.1:1/compute/v1/projects/p"
    running = operation.as_json(url)
    assert (running["status"], running["progress"]) == ("RUNNING", 0)
    operation.finish()
    done = operation.as_json(url)
    assert (done["status"], done["progress"], done["user"]) == ("DONE", 100, "dumont-local@local")
    assert done["selfLink"] == f"{url}/zones/z/operations/{operation.name}"
    assert (done["zone"], done["targetLink"]) == (f"{url}/zones/z", f"{url}/zones/z/instances/s")
    assert "error" not in done
    failed = Operation("insert", "p", "z", "zones/z/instances/s", "1")
    failed.finish((403, "QUOTA_EXCEEDED", "Quota 'CPUS' exceeded."))
    data = failed.as_json(url)
    assert (data["status"], data["httpErrorStatusCode"], data["error"]["errors"][0]["code"]) == (
        "DONE", 403, "QUOTA_EXCEEDED")


def test_a_global_operation_has_no_zone() -> None:
    """Given a firewall's operation, then it lives under global/ and names the firewall as its target."""
    operation = Operation("insert", "p", None, "global/firewalls/allow-ssh", "7")
    data = operation.as_json("http://h/compute/v1/projects/p")
    assert "zone" not in data
    assert data["selfLink"] == f"http://h/compute/v1/projects/p/global/operations/{operation.name}"
    assert data["targetLink"] == "http://h/compute/v1/projects/p/global/firewalls/allow-ssh"
    assert operation.target_name == "allow-ssh"


async def test_a_saved_vm_comes_back_with_its_history_done() -> None:
    """Given a VM with operations, when saved and loaded, then it and its operations are the same, all DONE."""
    vm = Vm("p", "z", "s", {"name": "s"}, host="gcp-s", last_start=1.0, last_stop=2.0)
    preempted = Operation("compute.instances.preempted", "p", "z", vm.target, vm.id)
    preempted.finish()
    loaded, [operation] = load_record(save_record(vm, [preempted]))
    assert (loaded.name, loaded.id, loaded.last_start, loaded.last_stop) == ("s", vm.id, 1.0, 2.0)
    assert (operation.name, operation.kind, operation.inserted) == (preempted.name, preempted.kind,
                                                                    preempted.inserted)
    assert operation.is_done()
    assert operation.target == "zones/z/instances/s"


def test_timings_come_from_the_environment_and_bad_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the emulator's settings in the environment, then they are used; a bad value names the variable."""
    monkeypatch.setenv(gcp.DELAY_ENV, "0")
    monkeypatch.setenv(gcp.NOTICE_ENV, "30")
    emulator = gcp.create(cast(Any, SimpleNamespace(state_dir=Path('/nonexistent'))))
    assert (emulator.delay, emulator.preempt_notice, emulator.wait_limit) == (0.0, 30.0, 120.0)
    monkeypatch.setenv(gcp.WAIT_ENV, "soon")
    with pytest.raises(UsageError, match="DUMONT_LOCAL_GCP_WAIT_SECONDS='soon' is not a number"):
        gcp.create(cast(Any, SimpleNamespace(state_dir=Path('/nonexistent'))))
    monkeypatch.setenv(gcp.WAIT_ENV, "-1")
    with pytest.raises(UsageError, match="is negative"):
        gcp.create(cast(Any, SimpleNamespace(state_dir=Path('/nonexistent'))))
