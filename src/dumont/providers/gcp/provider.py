"""The standby as a Compute Engine spot VM: create, read, stop, start and delete it (``StandbyCloud``), and what
``dumont doctor`` reads of the project: OS Login, the zone, quotas, the SSH firewall rule.

Instances are named, not numbered, in the Compute API, so the VM's name is its ``instance_id``. Every mutating
call waits for its operation with our own operations client (see ``client.py``) and a deadline.

The VM is made reachable the way Google's debian-12 image allows: keys for a non-root user in ``ssh-keys``
(root is refused, https://cloud.google.com/compute/docs/connect/root-ssh), ``enable-oslogin=FALSE`` on the VM so a
project-wide OS Login does not switch those keys off (its own value wins), a network tag, and a firewall rule for
tcp:22 to that tag, created before the VM when no rule opens the port (``project.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.cloud import compute_v1

from dumont.config import GcpConfig
from dumont.providers.base import (
    Instance,
    InstanceNotFound,
    ProviderAuthError,
    ProviderRequestError,
    ProviderUnavailable,
    StandbySpec,
)
from dumont.providers.gcp import project, states
from dumont.providers.gcp.client import CALL_TIMEOUT, ComputeApi, MetadataChanged, resolve_access, to_json
from dumont.providers.gcp.project import FirewallRule, ProjectInfo, Quota
from dumont.providers.gcp.states import SSH_PORT_KEY

OPERATION_TIMEOUT = 300.0  # creating a spot VM takes about a minute; starting one may wait for capacity


def standby_resource(spec: StandbySpec, zone: str) -> compute_v1.Instance:
    """The Instance to insert for ``spec`` (``research/cloud-apis.md`` §2.2).

    automatic_restart and on_host_maintenance are left out for a spot VM: GCE fixes them (no restart,
    TERMINATE) and sending them explicitly was never checked against the real API.
    """
    check_login(spec.ssh_user)
    if not spec.network_tag:
        raise ProviderRequestError(f"standby {spec.name} has no network tag, so no firewall rule can open its SSH "
                                   "port", hint='give it one, e.g. network_tag="dumont-standby"')
    keys = "\n".join(f"{spec.ssh_user}:{key.strip()}" for key in spec.ssh_public_keys if key.strip())
    items = [compute_v1.Items(key="ssh-keys", value=keys)] if keys else []
    # The VM's own value wins over the project's: a project with OS Login on would otherwise ignore our keys.
    items.append(compute_v1.Items(key="enable-oslogin", value="FALSE"))
    if spec.startup_script:
        items.append(compute_v1.Items(key="startup-script", value=spec.startup_script))
    scheduling = compute_v1.Scheduling()
    if spec.spot:
        scheduling.provisioning_model = "SPOT"  # a string field holding Scheduling.ProvisioningModel's name
        scheduling.instance_termination_action = spec.termination_action
    return compute_v1.Instance(
        name=spec.name,
        machine_type=f"zones/{zone}/machineTypes/{spec.machine_type}",
        disks=[compute_v1.AttachedDisk(
            boot=True, auto_delete=True, type_="PERSISTENT",
            initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=spec.image,
                                                                      disk_size_gb=spec.disk_gb))],
        network_interfaces=[compute_v1.NetworkInterface(
            network=project.DEFAULT_NETWORK,
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT",
                                                    network_tier="PREMIUM")])],
        tags=compute_v1.Tags(items=[spec.network_tag]),
        scheduling=scheduling,
        metadata=compute_v1.Metadata(items=items),
        labels=dict(spec.labels),
    )


def check_login(user: str) -> None:
    """Refuse a login Google's images will not let in over SSH (root, or none)."""
    if user.strip() in ("", project.ROOT):
        raise ProviderRequestError(f"SSH user {user!r} cannot log in to a Compute Engine VM: Google's images "
                                   "refuse root over SSH", hint='use a non-root user such as "dumont"; the image '
                                                                "gives metadata users passwordless sudo")


def preemption_filter(name: str) -> str:
    """The zone-operations filter that finds the preemptions of VM ``name`` (cloud-apis.md §2.5)."""
    return f'operationType="{states.PREEMPTED_OPERATION}" AND targetLink:instances/{name}'


class GcpStandbyCloud:
    """The standby VM on Compute Engine. Raises only ProviderError subclasses."""

    name = "gcp"

    def __init__(self, api: ComputeApi, *, operation_timeout: float = OPERATION_TIMEOUT) -> None:
        self.api = api
        self.operation_timeout = operation_timeout

    @classmethod
    async def connect(cls, config: GcpConfig, *, call_timeout: float = CALL_TIMEOUT,
                      operation_timeout: float = OPERATION_TIMEOUT) -> GcpStandbyCloud:
        """Resolve credentials (a file or ADC, which may probe the GCE metadata server) off the event loop."""
        async with asyncio.timeout(call_timeout):
            access = await asyncio.to_thread(resolve_access, config)
        return cls(ComputeApi(access, call_timeout=call_timeout), operation_timeout=operation_timeout)

    async def create_standby(self, spec: StandbySpec) -> Instance:
        """Open tcp:22 to the VM's tag if no rule does, create the spot VM and return its record; an existing VM
        of that name with our labels is returned."""
        resource = standby_resource(spec, self.api.zone)
        await self.ensure_ssh_firewall(spec.network_tag, spec.ssh_source_ranges)
        try:
            operation = await self.api.call(f"insert of VM {spec.name}", self.api.instances.insert_unary,
                                            instance_resource=resource)
        except ProviderRequestError as exc:
            if "already exists" not in str(exc):
                raise
            return await self._adopt(spec, exc)
        await self.api.wait_done(operation, f"insert of VM {spec.name}", deadline=self.operation_timeout)
        return await self.get(spec.name)

    async def get(self, instance_id: str) -> Instance:
        """The VM's record: PREEMPTED (not STOPPED) when Compute Engine took it back; TERMINATED when gone."""
        try:
            vm = to_json(await self.api.call(f"get of VM {instance_id}", self.api.instances.get,
                                             instance=instance_id))
        except InstanceNotFound:
            return states.gone(instance_id, await self.preemptions(instance_id))
        preempted = await self.preemptions(instance_id) if states.needs_preemption_check(vm) else []
        return states.to_instance(vm, preempted)

    async def list(self) -> list[Instance]:
        """Every VM of the zone, as :meth:`get` gives each (a stopped one is asked about its preemptions)."""
        vms = await self.api.call("list of VMs", self._list_instances)
        found = []
        for vm in vms:
            preempted = await self.preemptions(str(vm["name"])) if states.needs_preemption_check(vm) else []
            found.append(states.to_instance(vm, preempted))
        return found

    async def stop(self, instance_id: str) -> None:
        """Stop the VM (disk kept) and wait until it is TERMINATED."""
        await self._act("stop", instance_id, self.api.instances.stop_unary)

    async def start(self, instance_id: str) -> None:
        """Start a stopped or preempted VM and wait until it is RUNNING (a spot VM may lack capacity)."""
        await self._act("start", instance_id, self.api.instances.start_unary)

    async def delete(self, instance_id: str) -> None:
        """Delete the VM and its disk; succeeds if it is already gone."""
        try:
            await self._act("delete", instance_id, self.api.instances.delete_unary)
        except InstanceNotFound:
            return

    async def preemptions(self, instance_id: str) -> builtins.list[datetime]:
        """When Compute Engine preempted VM ``instance_id`` (oldest first), from the zone's operations."""
        operations = await self.api.call(f"list of preemptions of VM {instance_id}", self._list_operations,
                                         filter_=preemption_filter(instance_id))
        return states.preemption_times(op for op in operations if _targets(op, instance_id))

    async def was_preempted(self, instance_id: str) -> datetime | None:
        """The time of the VM's latest preemption, or None if it was never preempted."""
        times = await self.preemptions(instance_id)
        return times[-1] if times else None

    async def ssh_host_keys(self, instance_id: str) -> builtins.list[str]:
        """The VM's SSH host keys as its guest published them (guest attributes ``hostkeys/``), for pinning."""
        try:
            attributes = await self.api.call(f"host keys of VM {instance_id}", self._guest_attributes,
                                             instance=instance_id)
        except InstanceNotFound:
            return []
        items = to_json(attributes).get("queryValue", {}).get("items", [])
        return [f"{i['key']} {i['value']}" for i in items if i.get("key") and i.get("value")]

    # ------------------------------------------------------------------ the project (for create and doctor)

    async def project_info(self) -> ProjectInfo:
        """The project's name and common instance metadata (where a project-wide ``enable-oslogin`` shows)."""
        data = await self.api.call(f"read of project {self.api.project}", self.api.projects.get, zonal=False)
        return project.project_info(to_json(data))

    async def zone_exists(self, zone: str | None = None) -> bool:
        """Whether ``zone`` (the configured one by default) exists for this project."""
        name = zone or self.api.zone
        try:
            await self.api.call(f"read of zone {name}", self.api.zones.get, zonal=False, zone=name)
        except InstanceNotFound:
            return False
        return True

    async def quotas(self) -> builtins.list[Quota]:
        """The quotas of the configured zone's region (CPUS, PREEMPTIBLE_CPUS, IN_USE_ADDRESSES, disks, ...)."""
        region = project.region_of(self.api.zone)
        data = await self.api.call(f"read of region {region}", self.api.regions.get, zonal=False, region=region)
        return project.quotas(to_json(data))

    async def firewall_rules(self) -> builtins.list[FirewallRule]:
        """Every VPC firewall rule of the project."""
        rules = await self.api.call("list of firewall rules", self._list_firewalls, zonal=False)
        return [project.firewall_rule(rule) for rule in rules]

    async def ensure_ssh_firewall(self, network_tag: str, source_ranges: tuple[str, ...]) -> bool:
        """Create ``dumont-allow-ssh`` (tcp:22 from ``source_ranges`` to VMs tagged ``network_tag``) unless the
        project's rules already open that; return True if it created the rule."""
        rules = await self.firewall_rules()
        if project.ssh_open(rules, network_tag, source_ranges):
            return False
        body = project.ssh_rule(network_tag, source_ranges)
        ours = project.firewall_rule(body)
        if not project.ssh_open([*rules, ours], network_tag, source_ranges):
            denies = ", ".join(f"{r.name} (priority {r.priority})"
                               for r in project.blocking_denies(rules, network_tag, source_ranges))
            raise ProviderRequestError(f"firewall rules {denies} deny tcp:22 to VMs tagged {network_tag}, so a rule "
                                       f"allowing it at priority {ours.priority} would not help",
                                       hint="delete or narrow those rules, or allow tcp:22 at a lower priority number")
        what = f"insert of firewall rule {project.SSH_RULE_NAME}"
        resource = compute_v1.Firewall.from_json(json.dumps(body))
        try:
            operation = await self.api.call(what, self.api.firewalls.insert_unary, zonal=False,
                                            firewall_resource=resource)
        except ProviderAuthError as exc:
            raise ProviderAuthError(exc.message, hint=f"grant the account roles/compute.securityAdmin, or create the "
                                                      f"rule yourself: {ssh_rule_command(network_tag, source_ranges)}"
                                    ) from exc
        except ProviderRequestError as exc:
            if "already exists" not in str(exc):
                raise
            # Two pairs creating their standbys at once both find no rule and both insert it: the one that lost
            # the race finds the rule the other made (seen on a fleet's first start), which opens what it needs.
            if project.ssh_open(await self.firewall_rules(), network_tag, source_ranges):
                return False
            raise ProviderRequestError(
                f"firewall rule {project.SSH_RULE_NAME} exists but does not open tcp:22 to VMs tagged {network_tag} "
                f"from {', '.join(source_ranges)}",
                hint=f"delete it (gcloud compute firewall-rules delete {project.SSH_RULE_NAME}); Dumont creates it "
                     "again") from exc
        await self.api.wait_done(operation, what, deadline=self.operation_timeout)
        return True

    async def set_ssh_keys(self, instance_id: str, user: str, public_keys: Sequence[str]) -> None:
        """Let ``public_keys`` log in to VM ``instance_id`` as ``user``: ``ssh-keys`` lines merged with those kept,
        nothing written when none is missing. A write that loses a race with another is read and tried again once."""
        check_login(user)
        try:
            await self._merge_ssh_keys(instance_id, user, public_keys)
        except MetadataChanged:
            await self._merge_ssh_keys(instance_id, user, public_keys)

    async def _merge_ssh_keys(self, instance_id: str, user: str, keys: Sequence[str]) -> None:
        vm = to_json(await self.api.call(f"get of VM {instance_id}", self.api.instances.get, instance=instance_id))
        metadata = vm.get("metadata") or {}
        merged = project.merged_ssh_keys(project.metadata_dict(metadata).get("ssh-keys", ""), user, keys)
        if merged is None:
            return
        kept = [i for i in metadata.get("items") or [] if i.get("key") not in ("ssh-keys", SSH_PORT_KEY)]
        resource = compute_v1.Metadata(fingerprint=str(metadata.get("fingerprint", "")), items=[
            *(compute_v1.Items(key=str(i["key"]), value=str(i.get("value", ""))) for i in kept),
            compute_v1.Items(key="ssh-keys", value=merged)])
        what = f"set of SSH keys on VM {instance_id}"
        operation = await self.api.call(what, self.api.instances.set_metadata_unary, instance=instance_id,
                                        metadata_resource=resource)
        await self.api.wait_done(operation, what, deadline=self.operation_timeout)

    async def close(self) -> None:
        """Close the clients' HTTP sessions."""
        await asyncio.to_thread(self.api.close)

    # ------------------------------------------------------------------ helpers

    async def _act(self, verb: str, instance_id: str, method: Any) -> None:
        what = f"{verb} of VM {instance_id}"
        operation = await self.api.call(what, method, instance=instance_id)
        await self.api.wait_done(operation, what, deadline=self.operation_timeout)

    async def _adopt(self, spec: StandbySpec, exc: ProviderRequestError) -> Instance:
        # A create retried after a lost answer finds its own VM: adopt it; never take over someone else's.
        vm = to_json(await self.api.call(f"get of VM {spec.name}", self.api.instances.get, instance=spec.name))
        labels: Mapping[str, str] = vm.get("labels") or {}
        if any(labels.get(k) != v for k, v in spec.labels.items()):
            raise ProviderRequestError(
                f"a VM named {spec.name} already exists in {self.api.zone} without our labels {dict(spec.labels)}",
                hint="delete that VM or give the standby another name") from exc
        if vm.get("status") == "PROVISIONING":
            raise ProviderUnavailable(f"VM {spec.name} is still being created", hint="retry in a moment") from exc
        preempted = await self.preemptions(spec.name) if states.needs_preemption_check(vm) else []
        return states.to_instance(vm, preempted)

    def _guest_attributes(self, *, instance: str, retry: Any, timeout: float, project: str,
                          zone: str) -> compute_v1.GuestAttributes:
        request = compute_v1.GetGuestAttributesInstanceRequest(project=project, zone=zone, instance=instance,
                                                                query_path="hostkeys/")
        return self.api.instances.get_guest_attributes(request=request, retry=retry, timeout=timeout)

    def _list_firewalls(self, *, retry: Any, timeout: float, project: str) -> builtins.list[dict[str, Any]]:
        # Runs in a thread: the pager fetches further pages as it is iterated.
        request = compute_v1.ListFirewallsRequest(project=project)
        return [to_json(rule) for rule in self.api.firewalls.list(request=request, retry=retry, timeout=timeout)]

    def _list_instances(self, *, retry: Any, timeout: float, project: str, zone: str) -> builtins.list[dict[str, Any]]:
        # Runs in a thread: the pager fetches further pages as it is iterated.
        request = compute_v1.ListInstancesRequest(project=project, zone=zone)
        return [to_json(vm) for vm in self.api.instances.list(request=request, retry=retry, timeout=timeout)]

    def _list_operations(self, *, filter_: str, retry: Any, timeout: float, project: str,
                         zone: str) -> builtins.list[dict[str, Any]]:
        # Runs in a thread: the pager fetches further pages as it is iterated.
        request = compute_v1.ListZoneOperationsRequest(project=project, zone=zone, filter=filter_)
        return [to_json(op) for op in self.api.operations.list(request=request, retry=retry, timeout=timeout)]


def ssh_rule_command(network_tag: str, source_ranges: Sequence[str]) -> str:
    """The gcloud command that creates the rule ``ensure_ssh_firewall`` would."""
    return (f"gcloud compute firewall-rules create {project.SSH_RULE_NAME} --network default --direction INGRESS "
            f"--allow tcp:22 --target-tags {network_tag} --source-ranges {','.join(source_ranges)}")


def _targets(operation: Mapping[str, Any], name: str) -> bool:
    # The filter's ":" matches substrings (instances/std also matches instances/std-2): check exactly.
    return str(operation.get("targetLink", "")).rsplit("/", 1)[-1] == name
