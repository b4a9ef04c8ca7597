"""VM metadata as the guest agent applies it, and a region's quotas as the emulator counts them."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.localcloud.emulators.gcp_metadata import login_users, oslogin_enabled, startup_script
from dumont.localcloud.emulators.gcp_project import disk_needs, needs, over_quota, usage, vcpus
from dumont.localcloud.emulators.gcp_resources import Vm

A, B = "ssh-ed25519 AAAAC3NzA alice@laptop", "ssh-rsa AAAAB3NzB bob@desk"


def test_each_ssh_keys_line_makes_a_login_user_and_root_is_skipped() -> None:
    """Given ssh-keys lines for two users, root and junk, then each user gets its keys; root and junk nothing."""
    value = f"alice:{A}\nbob:{B}\nalice:{B}\nroot:{A}\n\nno-colon {A}\ncarol:not-a-key\nBad User:{A}\nalice:{A}"
    assert login_users({"ssh-keys": value}, {}) == {"alice": [A, B], "bob": [B]}


def test_project_keys_apply_unless_the_instance_blocks_them() -> None:
    """Given project-wide keys, then they add to the instance's, unless block-project-ssh-keys is TRUE."""
    assert login_users({"ssh-keys": f"alice:{A}"}, {"ssh-keys": f"bob:{B}"}) == {"alice": [A], "bob": [B]}
    assert login_users({"ssh-keys": f"alice:{A}", "block-project-ssh-keys": "TRUE"}, {"ssh-keys": f"bob:{B}"}) == {
        "alice": [A]}


@pytest.mark.parametrize(("instance", "project", "enabled"), [
    ({"enable-oslogin": "TRUE"}, {}, True),
    ({"enable-oslogin": "true"}, {}, True),
    ({}, {"enable-oslogin": "True"}, True),
    ({"enable-oslogin": "FALSE"}, {"enable-oslogin": "TRUE"}, False),  # the instance's value wins
    ({}, {}, False),
])
def test_os_login_switches_metadata_keys_off(instance: dict[str, str], project: dict[str, str],
                                             enabled: bool) -> None:
    """Given enable-oslogin on the instance or the project, then metadata keys log nobody in."""
    instance = {**instance, "ssh-keys": f"alice:{A}"}
    assert oslogin_enabled(instance, project) is enabled
    assert login_users(instance, project) == ({} if enabled else {"alice": [A]})


def test_the_startup_script_is_the_instances_else_the_projects() -> None:
    """Given startup-script items, then the instance's wins; a blank one is none."""
    assert startup_script({"startup-script": "apt-get install -y rsync"}, {"startup-script": "x"}) == (
        "apt-get install -y rsync")
    assert startup_script({}, {"startup-script": "x"}) == "x"
    assert startup_script({"startup-script": "  "}, {}) is None


def _vm(name: str, *, spot: bool = True, machine: str = "e2-medium", disk: str = "20", disk_type: str = "",
        zone: str = "local-a") -> Vm:
    params: dict[str, Any] = {"diskSizeGb": disk, **({"diskType": disk_type} if disk_type else {})}
    body = {"machineType": f"zones/{zone}/machineTypes/{machine}",
            "scheduling": {"provisioningModel": "SPOT"} if spot else {},
            "networkInterfaces": [{"accessConfigs": [{"name": "External NAT"}]}],
            "disks": [{"boot": True, "initializeParams": params}]}
    return Vm("p", zone, name, body, host=f"gcp-{name}")


def test_quota_usage_counts_running_cpus_and_ips_and_every_disk() -> None:
    """Given a running spot VM, a stopped standard one and one in another region, then usage counts the running
    VM's CPUs and IP and both local disks by type."""
    running, stopped = _vm("a"), _vm("b", spot=False, machine="e2-standard-4", disk_type="pd-ssd", disk="30")
    elsewhere = _vm("c", zone="us-central1-a")
    used = usage([(running, "RUNNING"), (stopped, "TERMINATED"), (elsewhere, "RUNNING")], "local")
    assert used == {"CPUS": 0.0, "PREEMPTIBLE_CPUS": 2.0, "IN_USE_ADDRESSES": 1.0, "DISKS_TOTAL_GB": 20.0,
                    "SSD_TOTAL_GB": 30.0}
    assert (needs(stopped), disk_needs(stopped)) == ({"CPUS": 4.0, "IN_USE_ADDRESSES": 1.0}, {"SSD_TOTAL_GB": 30.0})
    assert (vcpus("e2-micro"), vcpus("n2-standard-8"), vcpus("zones/z/machineTypes/f1-micro")) == (2, 8, 1)


def test_going_over_a_limit_is_quota_exceeded_as_gce_words_it() -> None:
    """Given a limit that one more VM would pass, then the failure is GCE's 403 QUOTA_EXCEEDED with the limit."""
    failure = over_quota({"PREEMPTIBLE_CPUS": 2.0}, {"PREEMPTIBLE_CPUS": 2.0}, {"PREEMPTIBLE_CPUS": 2.0}, "local")
    assert failure is not None
    assert failure.error == (403, "QUOTA_EXCEEDED", "Quota 'PREEMPTIBLE_CPUS' exceeded.  Limit: 2.0 in region local.")
    assert over_quota({"CPUS": 4.0}, {"CPUS": 2.0}, {"CPUS": 2.0}, "local") is None
