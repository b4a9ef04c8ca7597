"""The standby as a Compute Engine spot VM: create, read, stop, start and delete it (``StandbyCloud``).

Instances are named, not numbered, in the Compute API, so the VM's name is its ``instance_id``. Every mutating
call waits for its operation with our own operations client (see ``client.py``) and a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.cloud import compute_v1

from dumont.config import GcpConfig
from dumont.providers.base import (
    Instance,
    InstanceNotFound,
    ProviderRequestError,
    ProviderUnavailable,
    StandbySpec,
)
from dumont.providers.gcp import states
from dumont.providers.gcp.client import CALL_TIMEOUT, ComputeApi, resolve_access, to_json

OPERATION_TIMEOUT = 300.0  # creating a spot VM takes about a minute; starting one may wait for capacity


def standby_resource(spec: StandbySpec, zone: str) -> compute_v1.Instance:
    """The Instance to insert for ``spec`` (``research/cloud-apis.md`` §2.2).

    automatic_restart and on_host_maintenance are left out for a spot VM: GCE fixes them (no restart,
    TERMINATE) and sending them explicitly was never checked against the real API.
    """
    keys = "\n".join(f"{spec.ssh_user}:{key.strip()}" for key in spec.ssh_public_keys if key.strip())
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
            network="global/networks/default",
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT",
                                                    network_tier="PREMIUM")])],
        scheduling=scheduling,
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key="ssh-keys", value=keys)] if keys else []),
        labels=dict(spec.labels),
    )


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
        """Create the spot VM and return its record; an existing VM of that name with our labels is returned."""
        resource = standby_resource(spec, self.api.zone)
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

    async def preemptions(self, instance_id: str) -> list[datetime]:
        """When Compute Engine preempted VM ``instance_id`` (oldest first), from the zone's operations."""
        operations = await self.api.call(f"list of preemptions of VM {instance_id}", self._list_operations,
                                         filter_=preemption_filter(instance_id))
        return states.preemption_times(op for op in operations if _targets(op, instance_id))

    async def was_preempted(self, instance_id: str) -> datetime | None:
        """The time of the VM's latest preemption, or None if it was never preempted."""
        times = await self.preemptions(instance_id)
        return times[-1] if times else None

    async def ssh_host_keys(self, instance_id: str) -> list[str]:
        """The VM's SSH host keys as its guest published them (guest attributes ``hostkeys/``), for pinning."""
        try:
            attributes = await self.api.call(f"host keys of VM {instance_id}", self._guest_attributes,
                                             instance=instance_id)
        except InstanceNotFound:
            return []
        items = to_json(attributes).get("queryValue", {}).get("items", [])
        return [f"{i['key']} {i['value']}" for i in items if i.get("key") and i.get("value")]

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

    def _list_operations(self, *, filter_: str, retry: Any, timeout: float, project: str,
                         zone: str) -> list[dict[str, Any]]:
        # Runs in a thread: the pager fetches further pages as it is iterated.
        request = compute_v1.ListZoneOperationsRequest(project=project, zone=zone, filter=filter_)
        return [to_json(op) for op in self.api.operations.list(request=request, retry=retry, timeout=timeout)]


def _targets(operation: Mapping[str, Any], name: str) -> bool:
    # The filter's ":" matches substrings (instances/std also matches instances/std-2): check exactly.
    return str(operation.get("targetLink", "")).rsplit("/", 1)[-1] == name
