"""The GCP emulator's records and their REST JSON (camelCase, int64 as strings), plus the list-filter language.

Pure apart from the clock reads each record is given: the HTTP side lives in ``gcp.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PREEMPTED = "compute.instances.preempted"
HOST_ERROR = "compute.instances.hostError"  # GCE's record of a VM whose host died under it
SYSTEM_OPERATIONS = frozenset({PREEMPTED, HOST_ERROR})
# The emulator's addition to a VM's metadata: every local VM is on 127.0.0.0/8, each sshd on a port of its own.
SSH_PORT_KEY = "dumont-ssh-port"
NAME_PATTERN = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


def rfc3339(wall: float) -> str:
    """A wall-clock time as GCE writes timestamps (milliseconds, with an offset)."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def numeric_id() -> str:
    """A resource id: GCE ids are unsigned 64-bit numbers, sent as strings."""
    return str(10**18 + secrets.randbelow(8 * 10**18))


@dataclass
class Operation:
    """One operation: zonal (an instance's) or global (a firewall's, the project's); DONE once its work is."""

    kind: str  # operationType: insert, stop, start, delete, setMetadata, compute.instances.preempted, ...
    project: str
    zone: str | None  # None for a global operation
    target: str  # the target's path under the project: zones/Z/instances/N, global/firewalls/F, or "" (itself)
    target_id: str
    name: str = field(default_factory=lambda: f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}")
    id: str = field(default_factory=numeric_id)
    inserted: float = field(default_factory=time.time)
    ended: float | None = None
    error: tuple[int, str, str] | None = None  # HTTP status, GCE error code, message
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def scope(self) -> str:
        """Where it lives under its project: ``zones/Z`` or ``global``."""
        return f"zones/{self.zone}" if self.zone else "global"

    @property
    def target_name(self) -> str:
        """The last part of its target's path (a VM's or a firewall's name)."""
        return self.target.rsplit("/", 1)[-1]

    def finish(self, error: tuple[int, str, str] | None = None) -> None:
        """Mark the operation's work as done (with its error, if it failed)."""
        self.error, self.ended = error, time.time()
        self.finished.set()

    def is_done(self) -> bool:
        """Whether its work is over (it reports DONE)."""
        return self.finished.is_set()

    def as_json(self, project_url: str) -> dict[str, Any]:
        """The Operation resource; ``project_url`` is ``<url>/compute/v1/projects/P``."""
        done, scope_url = self.is_done(), f"{project_url}/{self.scope}"
        data: dict[str, Any] = {
            "kind": "compute#operation", "id": self.id, "name": self.name,
            "operationType": self.kind, "targetLink": f"{project_url}/{self.target}".rstrip("/"),
            "targetId": self.target_id, "status": "DONE" if done else "RUNNING", "progress": 100 if done else 0,
            "user": "system" if self.kind in SYSTEM_OPERATIONS else "dumont-local@local",
            "insertTime": rfc3339(self.inserted), "startTime": rfc3339(self.inserted),
            "selfLink": f"{scope_url}/operations/{self.name}",
        }
        if self.zone:
            data["zone"] = scope_url
        if done:
            data["endTime"] = rfc3339(max(self.ended or self.inserted, self.inserted))
            if self.error:
                status, code, message = self.error
                data.update(error={"errors": [{"code": code, "message": message}]}, httpErrorStatusCode=status,
                            httpErrorMessage=message)
        return data


@dataclass
class Vm:
    """One VM as the emulator keeps it: what was inserted, its host in the pool, and its last operation."""

    project: str
    zone: str
    name: str
    body: dict[str, Any]  # the Instance as inserted
    host: str  # the pool host standing in for it
    id: str = field(default_factory=numeric_id)
    created: float = field(default_factory=time.time)
    last_start: float | None = None
    last_stop: float | None = None
    current: Operation | None = None  # the latest operation acting on it (its status shows while in flight)
    deleted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def target(self) -> str:
        """Its path under the project, as operations name their target."""
        return f"zones/{self.zone}/instances/{self.name}"

    @property
    def is_spot(self) -> bool:
        """Whether it was created with provisioningModel SPOT."""
        return bool(self.body.get("scheduling", {}).get("provisioningModel") == "SPOT")

    @property
    def termination_action(self) -> str:
        """STOP (default) or DELETE: what a preemption does to it."""
        return str(self.body.get("scheduling", {}).get("instanceTerminationAction") or "STOP")

    @property
    def metadata_items(self) -> list[dict[str, str]]:
        """Its metadata items as last set (without the emulator's own)."""
        return list((self.body.get("metadata") or {}).get("items") or [])

    @property
    def metadata_dict(self) -> dict[str, str]:
        """Its metadata as a dict."""
        return {str(i["key"]): str(i.get("value", "")) for i in self.metadata_items if i.get("key")}

    @property
    def tags(self) -> list[str]:
        """Its network tags (``tags.items``), which firewall rules target."""
        return [str(tag) for tag in (self.body.get("tags") or {}).get("items") or []]

    @property
    def network(self) -> str:
        """Its first interface's network, as inserted (``global/networks/default`` when none was named)."""
        nics = self.body.get("networkInterfaces") or [{}]
        return str((nics[0] or {}).get("network") or "global/networks/default")

    def as_json(self, project_url: str, status: str, *, address: str | None, ssh_port: int | None) -> dict[str, Any]:
        """The Instance resource as ``instances.get`` returns it; the NAT IP and port only while its host is up."""
        body, base = self.body, f"{project_url}/zones/{self.zone}"
        machine = str(body.get("machineType", "e2-medium")).rsplit("/", 1)[-1]
        nat_ip = address if ssh_port is not None else None
        data: dict[str, Any] = {
            "kind": "compute#instance", "id": self.id, "creationTimestamp": rfc3339(self.created),
            "name": self.name, "machineType": f"{base}/machineTypes/{machine}", "status": status,
            "zone": base, "networkInterfaces": _interfaces(body, project_url, nat_ip, self.id),
            "disks": _disks(body, base, self.name), "metadata": _metadata(self.metadata_items, ssh_port),
            "tags": {"items": self.tags, "fingerprint": _digest(self.tags)},
            "labels": dict(body.get("labels") or {}), "scheduling": _scheduling(body),
            "selfLink": f"{base}/instances/{self.name}", "deletionProtection": False, "startRestricted": False,
            "fingerprint": _digest(body),
        }
        if self.last_start is not None:
            data["lastStartTimestamp"] = rfc3339(self.last_start)
        if self.last_stop is not None:
            data["lastStopTimestamp"] = rfc3339(self.last_stop)
        return data


def save_record(vm: Vm, operations: list[Operation]) -> dict[str, Any]:
    """What survives a restart of the local cloud: the VM and the history of its operations."""
    return {"project": vm.project, "zone": vm.zone, "name": vm.name, "id": vm.id, "body": vm.body,
            "host": vm.host, "created": vm.created, "last_start": vm.last_start, "last_stop": vm.last_stop,
            "operations": [{"kind": op.kind, "name": op.name, "id": op.id, "inserted": op.inserted,
                            "ended": op.ended, "error": list(op.error) if op.error else None} for op in operations]}


def load_record(data: Mapping[str, Any]) -> tuple[Vm, list[Operation]]:
    """A VM and its operations (all DONE) from :func:`save_record`'s output."""
    vm = Vm(data["project"], data["zone"], data["name"], data["body"], data["host"], id=data["id"],
            created=data["created"], last_start=data["last_start"], last_stop=data["last_stop"])
    operations = []
    for raw in data.get("operations", []):
        error = raw.get("error")
        operation = Operation(raw["kind"], vm.project, vm.zone, vm.target, vm.id, name=raw["name"], id=raw["id"],
                              inserted=raw["inserted"])
        operation.finish(tuple(error) if error else None)
        operation.ended = raw.get("ended") or operation.inserted
        operations.append(operation)
    return vm, operations


def _interfaces(body: Mapping[str, Any], project_url: str, nat_ip: str | None, vm_id: str) -> list[dict[str, Any]]:
    out = []
    for index, nic in enumerate(body.get("networkInterfaces") or [{}]):
        configs = [{**ac, "kind": "compute#accessConfig", **({"natIP": nat_ip} if nat_ip else {})}
                   for ac in nic.get("accessConfigs") or []]
        network = str(nic.get("network") or "global/networks/default").rsplit("/", 1)[-1]
        internal = f"10.128.{int(vm_id) % 250}.{index + 2}"  # stays the same across stop and start, as in GCE
        out.append({**nic, "kind": "compute#networkInterface", "name": f"nic{index}", "networkIP": internal,
                    "network": f"{project_url}/global/networks/{network}", "accessConfigs": configs})
    return out


def _disks(body: Mapping[str, Any], base: str, name: str) -> list[dict[str, Any]]:
    out = []
    for index, disk in enumerate(body.get("disks") or []):
        size = (disk.get("initializeParams") or {}).get("diskSizeGb", "10")
        rest = {k: v for k, v in disk.items() if k != "initializeParams"}
        out.append({**rest, "kind": "compute#attachedDisk", "index": index, "mode": "READ_WRITE",
                    "deviceName": f"persistent-disk-{index}", "diskSizeGb": str(size),
                    "source": f"{base}/disks/{name}" + (f"-{index}" if index else "")})
    return out


def _metadata(items: list[dict[str, str]], ssh_port: int | None) -> dict[str, Any]:
    shown = list(items)
    if ssh_port is not None:
        shown.append({"key": SSH_PORT_KEY, "value": str(ssh_port)})
    # The fingerprint covers what was set, not what the emulator adds, so a read-modify-write stays valid.
    return {"kind": "compute#metadata", "fingerprint": metadata_fingerprint(items), "items": shown}


def metadata_fingerprint(items: list[dict[str, str]]) -> str:
    """A metadata fingerprint: a hash of the items (the same items give the same one, any change another)."""
    return _digest(sorted((str(i.get("key")), str(i.get("value", ""))) for i in items))


def _digest(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, default=str).encode()
    return base64.b64encode(hashlib.sha256(canonical).digest()[:8]).decode()


def _scheduling(body: Mapping[str, Any]) -> dict[str, Any]:
    scheduling = dict(body.get("scheduling") or {})
    if scheduling.get("provisioningModel") == "SPOT":
        # GCE fixes these for spot VMs whatever was sent.
        scheduling.update(automaticRestart=False, onHostMaintenance="TERMINATE", preemptible=False)
    else:
        scheduling.setdefault("automaticRestart", True)
        scheduling.setdefault("onHostMaintenance", "MIGRATE")
        scheduling.setdefault("provisioningModel", "STANDARD")
    return scheduling


def error_body(status: int, reason: str, message: str) -> dict[str, Any]:
    """An error as the Compute API sends it."""
    return {"error": {"code": status, "message": message,
                      "errors": [{"domain": "global", "reason": reason, "message": message}]}}


# --- list filters: `field = "value"`, `field != value`, `field:value`, joined by AND or spaces ----------------

_TERM = re.compile(r'\s*\(?\s*([A-Za-z][A-Za-z0-9_.\-]*)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|[^\s()"]+)\s*\)?\s*')
_AND = re.compile(r"AND\s+")


def parse_filter(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate for a Compute list ``filter``; raises ValueError on what this emulator does not understand."""
    terms: list[tuple[str, str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _TERM.match(text, pos)
        if match is None:
            raise ValueError(f"cannot parse the filter at {text[pos:pos + 30]!r}")
        name, op, value = match.groups()
        terms.append((name, op, value[1:-1].replace('\\"', '"') if value.startswith('"') else value))
        pos = match.end()
        if and_match := _AND.match(text, pos):
            pos = and_match.end()
    return lambda resource: all(_matches(resource, *term) for term in terms)


def _matches(resource: Mapping[str, Any], name: str, op: str, expected: str) -> bool:
    actual: Any = resource
    for part in name.split("."):
        actual = actual.get(part) if isinstance(actual, Mapping) else None
    values = actual if isinstance(actual, list) else [actual]  # a repeated field matches if one element does
    if op == ":":
        return any(v is not None and (expected == "*" or expected in _text(v)) for v in values)
    pattern = ".*".join(re.escape(part) for part in expected.split("*"))  # "=" takes * as a wildcard
    equal = any(v is not None and re.fullmatch(pattern, _text(v)) is not None for v in values)
    return equal if op == "=" else not equal


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
