"""The spot VM we ask for, where our calls go, with which credentials, and how Google's errors become ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from dumont.config import GcpConfig
from dumont.errors import Recovery
from dumont.providers.base import (
    InstanceNotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailable,
    StandbySpec,
)
from dumont.providers.gcp.client import (
    ComputeApi,
    MetadataChanged,
    is_loopback_endpoint,
    raise_for_operation,
    resolve_access,
    to_json,
    translate,
)
from dumont.providers.gcp.provider import preemption_filter, standby_resource

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE guard@host"


def test_the_standby_is_a_spot_vm_with_its_disk_ip_keys_tag_and_labels() -> None:
    """Given the default spec, then the body is the one of cloud-apis.md §2.2, less the fields GCE fixes for spot,
    plus the network tag the SSH rule targets and OS Login off on the VM."""
    spec = StandbySpec(name="standby-1", ssh_user="guard", ssh_public_keys=[KEY, "  "], labels={"role": "standby"})
    body = to_json(standby_resource(spec, "asia-southeast1-b"))
    assert body == {
        "name": "standby-1",
        "machineType": "zones/asia-southeast1-b/machineTypes/e2-medium",
        "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
                   "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12",
                                        "diskSizeGb": "20"}}],
        "networkInterfaces": [{"network": "global/networks/default",
                               "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT",
                                                  "networkTier": "PREMIUM"}]}],
        "tags": {"items": ["dumont-standby"]},
        "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"},
        "metadata": {"items": [{"key": "ssh-keys", "value": f"guard:{KEY}"},
                               {"key": "enable-oslogin", "value": "FALSE"}]},
        "labels": {"role": "standby"},
    }


def test_the_spec_chooses_termination_action_disk_image_machine_tag_and_startup_script() -> None:
    """Given a spec with DELETE, a bigger disk, another image, tag and a startup script, then the body says so;
    the keys are for the default user, dumont."""
    spec = StandbySpec(name="s", machine_type="e2-small", disk_gb=30, image="projects/p/global/images/i",
                       termination_action="DELETE", ssh_public_keys=[KEY, KEY.replace("FAKE", "TWO")],
                       network_tag="standby-net", startup_script="apt-get install -y rsync")
    body = to_json(standby_resource(spec, "z"))
    assert body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}
    assert body["disks"][0]["initializeParams"] == {"sourceImage": "projects/p/global/images/i", "diskSizeGb": "30"}
    assert body["machineType"] == "zones/z/machineTypes/e2-small"
    assert body["tags"] == {"items": ["standby-net"]}
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert items["ssh-keys"].splitlines() == [f"dumont:{KEY}", f"dumont:{KEY.replace('FAKE', 'TWO')}"]
    assert (items["enable-oslogin"], items["startup-script"]) == ("FALSE", "apt-get install -y rsync")


def test_a_standard_vm_has_no_spot_scheduling_and_no_keys_means_no_ssh_keys_item() -> None:
    """Given spot off and no keys, then neither the spot model nor an empty ssh-keys item is sent."""
    body = to_json(standby_resource(StandbySpec(name="s", spot=False), "z"))
    assert "scheduling" not in body or "provisioningModel" not in body["scheduling"]
    assert body["metadata"]["items"] == [{"key": "enable-oslogin", "value": "FALSE"}]


@pytest.mark.parametrize(("changes", "match"), [
    ({"ssh_user": "root"}, "refuse root over SSH"),
    ({"ssh_user": " "}, "refuse root over SSH"),
    ({"network_tag": ""}, "no network tag"),
])
def test_a_standby_google_would_never_let_in_is_refused(changes: dict[str, str], match: str) -> None:
    """Given root as the SSH user, or no network tag for the firewall rule, then it is a request error."""
    with pytest.raises(ProviderRequestError, match=match):
        standby_resource(StandbySpec(name="s", ssh_public_keys=[KEY], **changes), "z")  # type: ignore[arg-type]


def test_the_preemption_filter_is_the_documented_one() -> None:
    """Then preemptions are found as in the official preemption_history sample (cloud-apis.md §2.5)."""
    assert preemption_filter("standby-1") == (
        'operationType="compute.instances.preempted" AND targetLink:instances/standby-1')


@pytest.mark.parametrize(("error", "expected", "recovery"), [
    (gexc.NotFound("gone"), InstanceNotFound, Recovery.STOP),
    (gexc.Unauthenticated("who"), ProviderAuthError, Recovery.STOP),
    (gexc.PermissionDenied("no"), ProviderAuthError, Recovery.STOP),
    (gexc.Forbidden("no"), ProviderAuthError, Recovery.STOP),
    (gexc.Forbidden("QUOTA_EXCEEDED: Quota 'CPUS' exceeded."), ProviderRequestError, Recovery.STOP),
    (gexc.TooManyRequests("slow down"), ProviderUnavailable, Recovery.RETRY),
    (gexc.InternalServerError("oops"), ProviderUnavailable, Recovery.RETRY),
    (gexc.ServiceUnavailable("later"), ProviderUnavailable, Recovery.RETRY),
    (gexc.BadGateway("proxy"), ProviderUnavailable, Recovery.RETRY),
    (gexc.DeadlineExceeded("slow"), ProviderUnavailable, Recovery.RETRY),
    (gexc.BadRequest("ZONE_RESOURCE_POOL_EXHAUSTED: no spot capacity"), ProviderUnavailable, Recovery.RETRY),
    (gexc.BadRequest("Invalid value for field 'resource.name'"), ProviderRequestError, Recovery.STOP),
    (gexc.InvalidArgument("bad"), ProviderRequestError, Recovery.STOP),
    (gexc.Conflict("The resource 'x' already exists"), ProviderRequestError, Recovery.STOP),
    (gexc.PreconditionFailed("Supplied fingerprint does not match"), MetadataChanged, Recovery.RETRY),
])
def test_google_errors_become_ours(error: gexc.GoogleAPICallError, expected: type[ProviderError],
                                   recovery: Recovery) -> None:
    """Given each google.api_core error, then it becomes the ProviderError that says what to do next."""
    translated = translate(error, "insert of VM s")
    assert type(translated) is expected
    assert translated.recovery is recovery
    assert "insert of VM s" in str(translated)


def test_a_failed_operation_raises_its_error_and_a_good_one_does_not() -> None:
    """Given DONE operations, then one carrying an error raises it translated; a clean one returns."""
    raise_for_operation(compute_v1.Operation(status="DONE", name="op-1"), "stop of VM s")
    failed = compute_v1.Operation(
        status="DONE", http_error_status_code=503, http_error_message="SERVICE UNAVAILABLE",
        error=compute_v1.Error(errors=[compute_v1.Errors(code="ZONE_RESOURCE_POOL_EXHAUSTED",
                                                         message="The zone does not have enough resources")]))
    with pytest.raises(ProviderUnavailable, match="ZONE_RESOURCE_POOL_EXHAUSTED: The zone does not have enough"):
        raise_for_operation(failed, "start of VM s")


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080", True), ("https://127.0.0.2", True), ("127.0.0.1:9", True),
    ("http://[::1]:80", True), ("https://compute.googleapis.com", False), ("http://localhost:80", False),
    ("http://192.0.2.1", False), ("", False), (None, False),
])
def test_only_a_loopback_address_is_the_local_emulator(url: str | None, expected: bool) -> None:
    """Given an endpoint, then it counts as local only when it is a loopback IP address."""
    assert is_loopback_endpoint(url) is expected


def test_a_loopback_endpoint_uses_anonymous_credentials_and_reads_none(tmp_path: Path) -> None:
    """Given a loopback endpoint, then no credentials are looked up and the client has that endpoint."""
    access = resolve_access(GcpConfig(project="p", zone="z", api_endpoint="http://127.0.0.1:9"))
    assert isinstance(access.credentials, AnonymousCredentials)
    assert (access.project, access.zone, access.api_endpoint) == ("p", "z", "http://127.0.0.1:9")
    api = ComputeApi(access)
    assert api.instances.api_endpoint == "http://127.0.0.1:9"
    assert api.operations.api_endpoint == "http://127.0.0.1:9"  # the poller too (cloud-apis.md §2.4)


def test_the_local_clouds_descriptor_gives_endpoint_and_project(tmp_path: Path) -> None:
    """Given the file the local cloud writes, then the endpoint and project come from it."""
    path = tmp_path / "gcp_credentials.json"
    path.write_text(json.dumps({"type": "dumont_local_emulator", "api_endpoint": "http://127.0.0.1:7",
                                "project": "dumont-local", "zone": "local-a"}))
    access = resolve_access(GcpConfig(zone="local-a", credentials_file=path))
    assert (access.project, access.api_endpoint) == ("dumont-local", "http://127.0.0.1:7")
    assert isinstance(access.credentials, AnonymousCredentials)


def test_the_descriptor_is_refused_for_a_real_endpoint(tmp_path: Path) -> None:
    """Given the local descriptor with Google's endpoint, then we stop rather than call Google anonymously."""
    path = tmp_path / "gcp_credentials.json"
    path.write_text(json.dumps({"type": "dumont_local_emulator", "api_endpoint": "http://127.0.0.1:7"}))
    with pytest.raises(ProviderAuthError, match="describes the local cloud's emulator"):
        resolve_access(GcpConfig(project="p", credentials_file=path, api_endpoint="https://compute.googleapis.com"))


def test_a_broken_credentials_file_is_named_without_its_content(tmp_path: Path) -> None:
    """Given a file that is not Google credentials, then the error names the file but shows none of it."""
    path = tmp_path / "gcp.json"
    path.write_text(json.dumps({"type": "service_account", "private_key": "SECRET-MATERIAL"}))
    with pytest.raises(ProviderAuthError) as caught:
        resolve_access(GcpConfig(project="p", credentials_file=path))
    assert str(path) in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_a_missing_project_is_a_request_error_that_names_the_setting() -> None:
    """Given no project anywhere, then the error says which setting to add."""
    with pytest.raises(ProviderRequestError, match=r"gcp\.project is not set"):
        resolve_access(GcpConfig(api_endpoint="http://127.0.0.1:9"))


def test_an_authorized_user_file_gives_user_credentials_and_its_quota_project(tmp_path: Path) -> None:
    """Given the file `gcloud auth application-default login` writes, then it is used, and no secret is shown."""
    path = tmp_path / "adc.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "SECRET-1",
                                "refresh_token": "SECRET-2", "quota_project_id": "my-project"}))
    access = resolve_access(GcpConfig(credentials_file=path))
    assert access.project == "my-project"
    assert access.source == f"the credentials in {path}"
    assert "SECRET" not in repr(access.source)


def test_other_credential_types_are_refused_by_name(tmp_path: Path) -> None:
    """Given an external_account file, then it is refused (it would make google.auth run what it says)."""
    path = tmp_path / "wif.json"
    path.write_text(json.dumps({"type": "external_account", "credential_source": {"executable": {}}}))
    with pytest.raises(ProviderAuthError, match="holds credentials of type 'external_account'"):
        resolve_access(GcpConfig(project="p", credentials_file=path))
