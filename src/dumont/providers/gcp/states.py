"""Pure translation of Compute Engine instances (their REST JSON) into our :class:`Instance` records.

Every documented status and every value of the library's enum is mapped; anything else is ``UNKNOWN``. A
TERMINATED (or still STOPPING) VM is PREEMPTED, not STOPPED, when a ``compute.instances.preempted`` operation
for it was recorded after its last start: that is how Compute Engine tells a preemption from a user stop
(``research/cloud-apis.md`` §2.5), and the time check keeps an old preemption from colouring a later user stop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from dumont.providers.base import Instance, InstanceState

PROVIDER = "gcp"
PREEMPTED_OPERATION = "compute.instances.preempted"
# An optional metadata item for a VM whose sshd is not on port 22 (the local cloud's VMs share 127.0.0.0/8).
SSH_PORT_KEY = "dumont-ssh-port"
DEFAULT_SSH_PORT = 22

STATUS_MAP: Mapping[str, InstanceState] = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "PENDING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "STOPPING": InstanceState.STOPPING,
    "PENDING_STOP": InstanceState.STOPPING,  # a graceful shutdown is under way
    "SUSPENDING": InstanceState.STOPPING,
    "DEPROVISIONING": InstanceState.STOPPING,  # halted; network, IP and quota being released
    "SUSPENDED": InstanceState.STOPPED,  # memory and disk kept, but it serves nothing
    "STOPPED": InstanceState.STOPPED,
    "TERMINATED": InstanceState.STOPPED,  # GCE's word for "stopped": the disk is kept
    "REPAIRING": InstanceState.OFFLINE,  # GCE lost the VM's host and is repairing it
}
# Statuses a preemption passes through on its way to TERMINATED.
PREEMPTIBLE_STATUSES = frozenset({"STOPPING", "PENDING_STOP", "TERMINATED"})


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as GCE writes it (``2024-05-01T10:00:00.123-07:00``), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None  # a time without a zone cannot be compared safely


def preemption_times(operations: Iterable[Mapping[str, Any]]) -> list[datetime]:
    """When each ``compute.instances.preempted`` operation among ``operations`` was recorded."""
    times = (parse_time(op.get("insertTime")) for op in operations
             if op.get("operationType") == PREEMPTED_OPERATION)
    return sorted(t for t in times if t is not None)


def needs_preemption_check(vm: Mapping[str, Any]) -> bool:
    """Whether the VM's status could be the result of a preemption (worth listing its operations)."""
    return vm.get("status") in PREEMPTIBLE_STATUSES


def is_preempted(vm: Mapping[str, Any], preempted_at: Sequence[datetime]) -> bool:
    """Whether the VM is down because of a preemption recorded after its last start."""
    if vm.get("status") not in PREEMPTIBLE_STATUSES or not preempted_at:
        return False
    started = parse_time(vm.get("lastStartTimestamp"))
    return started is None or max(preempted_at) >= started


def state_of(vm: Mapping[str, Any], preempted_at: Sequence[datetime] = ()) -> InstanceState:
    """Our state for a VM, given the preemptions recorded for it."""
    if is_preempted(vm, preempted_at):
        return InstanceState.PREEMPTED
    status = vm.get("status")
    return STATUS_MAP.get(status, InstanceState.UNKNOWN) if isinstance(status, str) else InstanceState.UNKNOWN


def to_instance(vm: Mapping[str, Any], preempted_at: Sequence[datetime] = ()) -> Instance:
    """The :class:`Instance` for one VM's REST JSON (as returned by ``instances.get``)."""
    state = state_of(vm, preempted_at)
    message = vm.get("statusMessage") or None
    if state is InstanceState.PREEMPTED and not message:
        message = f"preempted by Compute Engine at {max(preempted_at).isoformat()}"
    return Instance(
        provider=PROVIDER,
        instance_id=str(vm.get("name", "")),
        state=state,
        raw_state=str(vm.get("status") or "(no status)"),
        ssh_host=external_ip(vm),
        ssh_port=ssh_port(vm),
        ssh_user=ssh_user(vm),
        label=labels_text(vm.get("labels")),
        status_message=message,
    )


def gone(name: str, preempted_at: Sequence[datetime] = ()) -> Instance:
    """The record of a VM the API no longer knows (deleted, or preempted with termination action DELETE)."""
    # A 404 cannot say who deleted it: name the last preemption and let the reader judge.
    message = "the VM does not exist (deleted)"
    if preempted_at:
        message = (f"the VM does not exist: deleted, or preempted with termination action DELETE (last "
                   f"preemption at {max(preempted_at).isoformat()})")
    return Instance(provider=PROVIDER, instance_id=name, state=InstanceState.TERMINATED, raw_state="NOT_FOUND",
                    status_message=message)


def external_ip(vm: Mapping[str, Any]) -> str | None:
    """``networkInterfaces[0].accessConfigs[0].natIP``: absent while the VM is stopped (the IP is released)."""
    interfaces = vm.get("networkInterfaces") or [{}]
    configs = (interfaces[0] or {}).get("accessConfigs") or [{}]
    nat_ip = (configs[0] or {}).get("natIP")
    return str(nat_ip) if nat_ip else None


def metadata_items(vm: Mapping[str, Any]) -> dict[str, str]:
    """The VM's metadata as a dict."""
    items = (vm.get("metadata") or {}).get("items") or []
    return {str(i.get("key")): str(i.get("value", "")) for i in items if isinstance(i, Mapping) and i.get("key")}


def ssh_port(vm: Mapping[str, Any]) -> int:
    """22, unless the metadata says the VM's sshd listens elsewhere (the local cloud's VMs share 127.0.0.1)."""
    raw = metadata_items(vm).get(SSH_PORT_KEY, "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else DEFAULT_SSH_PORT


def ssh_user(vm: Mapping[str, Any]) -> str:
    """The user of the first non-root ``ssh-keys`` entry (``user:key``; Google's images refuse root), else root."""
    for line in metadata_items(vm).get("ssh-keys", "").splitlines():
        user, sep, key = line.strip().partition(":")
        if sep and user and user != "root" and key.strip():
            return user
    return "root"


def labels_text(labels: object) -> str | None:
    """Labels as one stable string, ``key=value,...`` in key order (None when there are none)."""
    if not isinstance(labels, Mapping) or not labels:
        return None
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))
