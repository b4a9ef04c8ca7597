"""The GCP emulator's project-level resources: the project and its metadata, zones, regions and their quotas,
firewall rules, and the global operations that change them.

Any project name is accepted and starts as a new project does, less the kindness of ``default-allow-ssh``: no
firewall rules (``gcp_firewalls.py``), no common instance metadata. Zones are ``local-a``, ``local-b`` and
``local-c`` in region ``local``; any other zone or region is 404, as an unknown one is. A region's quotas are a new
project's usual limits (``POST /_dumont/projects/{project}/quotas`` changes them) with usage counted from the
emulator's VMs: vCPUs of VMs that are not TERMINATED (spot VMs count as PREEMPTIBLE_CPUS), one
IN_USE_ADDRESSES per such VM with an external IP, and every VM's disks (pd-ssd and pd-balanced as SSD_TOTAL_GB,
others as DISKS_TOTAL_GB). An insert or start that would go over a limit fails inside its DONE operation with
403 QUOTA_EXCEEDED, as GCE reports it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dumont.localcloud.daemon import json_response
from dumont.localcloud.emulators import gcp_firewalls, gcp_metadata
from dumont.localcloud.emulators.gcp_http import API, ApiError, OperationFailed, not_found, read_json
from dumont.localcloud.emulators.gcp_operations import Operations
from dumont.localcloud.emulators.gcp_resources import (
    Operation,
    Vm,
    metadata_fingerprint,
    numeric_id,
    parse_filter,
    rfc3339,
)
from dumont.transport.keys import write_private

REGION = "local"
ZONES = ("local-a", "local-b", "local-c")
# A new project's usual regional limits (the console's defaults vary; these are typical).
DEFAULT_LIMITS: Mapping[str, float] = {"CPUS": 24.0, "PREEMPTIBLE_CPUS": 24.0, "IN_USE_ADDRESSES": 8.0,
                                       "DISKS_TOTAL_GB": 4096.0, "SSD_TOTAL_GB": 500.0}
FIREWALL_LIMIT = 200.0
UNTERMINATED = frozenset({"PROVISIONING", "STAGING", "RUNNING", "STOPPING"})
PROJECT = API + "/projects/{project}"


@dataclass
class Project:
    """One project as the emulator keeps it (persisted in ``<state_dir>/gcp_projects.json``)."""

    name: str
    id: str = field(default_factory=numeric_id)
    created: float = field(default_factory=time.time)
    metadata: list[dict[str, str]] = field(default_factory=list)  # commonInstanceMetadata.items
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name, as gcp_firewalls stores them
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def metadata_items(self) -> dict[str, str]:
        """The project's common instance metadata as a dict."""
        return gcp_metadata.as_dict(self.metadata)

    def as_record(self) -> dict[str, Any]:
        """What survives a restart of the local cloud."""
        return {"name": self.name, "id": self.id, "created": self.created, "metadata": self.metadata,
                "firewalls": self.firewalls, "limits": self.limits}


def region_of(zone: str) -> str:
    """A zone's region: its name less the last ``-x`` (``us-central1-a`` is in ``us-central1``)."""
    return zone.rsplit("-", 1)[0]


def vcpus(machine_type: str) -> int:
    """The vCPUs a machine type counts against quota (``e2-standard-4``: 4; shared-core e2 types: 2)."""
    name = machine_type.rsplit("/", 1)[-1]
    if name in ("f1-micro", "g1-small"):
        return 1
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else 2


def needs(vm: Vm) -> dict[str, float]:
    """What a running VM takes of its region's quotas."""
    body = vm.body
    taken: dict[str, float] = {"PREEMPTIBLE_CPUS" if vm.is_spot else "CPUS": float(vcpus(
        str(body.get("machineType", "e2-medium"))))}
    if any(nic.get("accessConfigs") for nic in body.get("networkInterfaces") or []):
        taken["IN_USE_ADDRESSES"] = 1.0
    return taken


def disk_needs(vm: Vm) -> dict[str, float]:
    """What a VM's disks take of its region's quotas, running or not."""
    taken: dict[str, float] = {}
    for disk in vm.body.get("disks") or []:
        params = disk.get("initializeParams") or {}
        metric = "SSD_TOTAL_GB" if re.search(r"pd-(ssd|balanced)", str(params.get("diskType", ""))) else \
            "DISKS_TOTAL_GB"
        taken[metric] = taken.get(metric, 0.0) + float(params.get("diskSizeGb") or 10)
    return taken


def usage(vms: Iterable[tuple[Vm, str]], region: str) -> dict[str, float]:
    """Each metric's usage in ``region`` from the VMs there, with their current status."""
    used = dict.fromkeys(DEFAULT_LIMITS, 0.0)
    for vm, status in vms:
        if region_of(vm.zone) != region:
            continue
        taken = [disk_needs(vm), needs(vm) if status in UNTERMINATED else {}]
        for part in taken:
            for metric, amount in part.items():
                used[metric] += amount
    return used


def over_quota(limits: Mapping[str, float], used: Mapping[str, float], taken: Mapping[str, float],
               region: str) -> OperationFailed | None:
    """The QUOTA_EXCEEDED failure when ``taken`` more would go over a limit, else None."""
    for metric, amount in taken.items():
        limit = limits.get(metric, DEFAULT_LIMITS.get(metric, 0.0))
        if used.get(metric, 0.0) + amount > limit:
            return OperationFailed(403, "QUOTA_EXCEEDED", f"Quota '{metric}' exceeded.  Limit: {limit:.1f} in "
                                                          f"region {region}.")
    return None


VmLister = Callable[[str], list[tuple[Vm, str]]]


class ProjectApi:
    """Projects, zones, regions, firewalls and their global operations; ``changed`` re-applies a project's rules
    and metadata to its VMs after a change."""

    def __init__(self, operations: Operations, state_file: Path, vms: VmLister,
                 changed: Callable[[str], Awaitable[None]]) -> None:
        self.operations, self.state_file = operations, state_file
        self.vms, self.changed = vms, changed
        self.projects: dict[str, Project] = {}

    def get(self, name: str) -> Project:
        """The project called ``name`` (created on first use, as every name is accepted)."""
        if name not in self.projects:
            self.projects[name] = Project(name)
        return self.projects[name]

    def restore(self) -> None:
        """Load the projects of a previous run."""
        if not self.state_file.exists():
            return
        for raw in json.loads(self.state_file.read_text()):
            self.projects[raw["name"]] = Project(raw["name"], raw["id"], raw["created"], raw["metadata"],
                                                 raw["firewalls"], raw["limits"])

    def save(self) -> None:
        """Persist every project."""
        records = [p.as_record() for p in self.projects.values()]
        write_private(self.state_file, json.dumps(records, indent=1) + "\n", mode=0o644)

    def check_quota(self, vm: Vm, taken: Mapping[str, float]) -> None:
        """Raise QUOTA_EXCEEDED (for the DONE operation) if ``vm`` taking ``taken`` more would go over a limit."""
        region = region_of(vm.zone)
        others = [(v, s) for v, s in self.vms(vm.project) if v is not vm]
        failure = over_quota(self.get(vm.project).limits, usage(others, region), taken, region)
        if failure is not None:
            raise failure

    def add_routes(self, app: web.Application) -> None:
        """The project-level routes."""
        add = app.router
        add.add_get(PROJECT, self._project)
        add.add_post(PROJECT + "/setCommonInstanceMetadata", self._set_common_metadata)
        add.add_get(PROJECT + "/zones", self._zones)
        add.add_get(PROJECT + "/zones/{zone}", self._zone)
        add.add_get(PROJECT + "/regions/{region}", self._region)
        add.add_post(PROJECT + "/global/firewalls", self._insert_firewall)
        add.add_get(PROJECT + "/global/firewalls", self._list_firewalls)
        add.add_get(PROJECT + "/global/firewalls/{firewall}", self._get_firewall)
        add.add_delete(PROJECT + "/global/firewalls/{firewall}", self._delete_firewall)
        add.add_get("/_dumont/projects/{project}/quotas", self._limits)
        add.add_post("/_dumont/projects/{project}/quotas", self._set_limits)

    # ------------------------------------------------------------------ project, zones, regions

    async def _project(self, request: web.Request) -> web.Response:
        project = self.get(request.match_info["project"])
        url = self.operations.project_url(project.name)
        return json_response({
            "kind": "compute#project", "id": project.id, "name": project.name,
            "creationTimestamp": rfc3339(project.created), "selfLink": url,
            "commonInstanceMetadata": {"kind": "compute#metadata", "items": project.metadata,
                                       "fingerprint": metadata_fingerprint(project.metadata)},
            "quotas": [{"metric": "FIREWALLS", "limit": FIREWALL_LIMIT, "usage": float(len(project.firewalls))}],
            "defaultServiceAccount": f"{project.id[:12]}-compute@developer.gserviceaccount.com",
            "defaultNetworkTier": "PREMIUM", "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS"})

    async def _set_common_metadata(self, request: web.Request) -> web.Response:
        project = self.get(request.match_info["project"])
        body = await read_json(request)
        check_fingerprint(body, project.metadata)
        items = checked_items(body)
        operation = Operation("setCommonInstanceMetadata", project.name, None, "", project.id)

        async def apply() -> None:
            project.metadata = items
            self.save()
            await self.changed(project.name)

        return await self.operations.perform(operation, apply, lock=project.lock)

    async def _zones(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        url = self.operations.project_url(project)
        return json_response({"kind": "compute#zoneList", "id": f"projects/{project}/zones",
                              "items": [self._zone_json(project, z) for z in ZONES], "selfLink": f"{url}/zones"})

    async def _zone(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        if zone not in ZONES:
            raise not_found(f"projects/{project}/zones/{zone}")
        return json_response(self._zone_json(project, zone))

    def _zone_json(self, project: str, zone: str) -> dict[str, Any]:
        url = self.operations.project_url(project)
        return {"kind": "compute#zone", "id": str(2000 + ZONES.index(zone)), "name": zone, "description": zone,
                "status": "UP", "region": f"{url}/regions/{region_of(zone)}", "selfLink": f"{url}/zones/{zone}",
                "availableCpuPlatforms": ["Intel Broadwell", "AMD Milan"], "supportsPzs": False}

    async def _region(self, request: web.Request) -> web.Response:
        project, region = request.match_info["project"], request.match_info["region"]
        if region != REGION:
            raise not_found(f"projects/{project}/regions/{region}")
        url, limits = self.operations.project_url(project), self.get(project).limits
        used = usage(self.vms(project), region)
        quotas = [{"metric": m, "limit": limits.get(m, DEFAULT_LIMITS[m]), "usage": used[m]} for m in DEFAULT_LIMITS]
        return json_response({"kind": "compute#region", "id": "1000", "name": region, "description": region,
                              "status": "UP", "zones": [f"{url}/zones/{z}" for z in ZONES], "quotas": quotas,
                              "selfLink": f"{url}/regions/{region}"})

    async def _limits(self, request: web.Request) -> web.Response:
        return json_response(self.get(request.match_info["project"]).limits)

    async def _set_limits(self, request: web.Request) -> web.Response:
        project, body = self.get(request.match_info["project"]), await read_json(request)
        for metric, limit in body.items():
            if metric not in DEFAULT_LIMITS or isinstance(limit, bool) or not isinstance(limit, int | float) \
                    or limit < 0:
                raise ApiError(400, "invalid", f"{metric}={limit!r}: give limits of "
                                               f"{', '.join(DEFAULT_LIMITS)} as numbers, 0 or more")
        project.limits.update({metric: float(limit) for metric, limit in body.items()})
        self.save()
        return json_response(project.limits)

    # ------------------------------------------------------------------ firewalls

    async def _insert_firewall(self, request: web.Request) -> web.Response:
        project, body = self.get(request.match_info["project"]), await read_json(request)
        try:
            rule = gcp_firewalls.checked_rule(body)
        except gcp_firewalls.InvalidRule as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        if rule["name"] in project.firewalls:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{project.name}/global/firewalls/{rule['name']}' already exists")
        rule.update(id=numeric_id(), creationTimestamp=rfc3339(time.time()))
        operation = Operation("insert", project.name, None, f"global/firewalls/{rule['name']}", rule["id"])

        async def insert() -> None:
            project.firewalls[rule["name"]] = rule
            self.save()
            await self.changed(project.name)

        return await self.operations.perform(operation, insert, lock=project.lock)

    async def _list_firewalls(self, request: web.Request) -> web.Response:
        project = self.get(request.match_info["project"])
        try:
            keep = parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            raise ApiError(400, "invalid", f"Invalid value for field 'filter': {exc}") from None
        url = self.operations.project_url(project.name)
        items = [gcp_firewalls.rule_json(project.firewalls[n], url) for n in sorted(project.firewalls)]
        return json_response({"kind": "compute#firewallList", "id": f"projects/{project.name}/global/firewalls",
                              "items": [i for i in items if keep(i)], "selfLink": f"{url}/global/firewalls"})

    async def _get_firewall(self, request: web.Request) -> web.Response:
        project, rule = self._find_rule(request)
        return json_response(gcp_firewalls.rule_json(rule, self.operations.project_url(project.name)))

    async def _delete_firewall(self, request: web.Request) -> web.Response:
        project, rule = self._find_rule(request)
        operation = Operation("delete", project.name, None, f"global/firewalls/{rule['name']}", rule["id"])

        async def delete() -> None:
            project.firewalls.pop(rule["name"], None)
            self.save()
            await self.changed(project.name)

        return await self.operations.perform(operation, delete, lock=project.lock)

    def _find_rule(self, request: web.Request) -> tuple[Project, dict[str, Any]]:
        project, name = self.get(request.match_info["project"]), request.match_info["firewall"]
        if name not in project.firewalls:
            raise not_found(f"projects/{project.name}/global/firewalls/{name}")
        return project, project.firewalls[name]


def check_fingerprint(body: Mapping[str, Any], current: list[dict[str, str]]) -> None:
    """Refuse (412 conditionNotMet) a metadata write whose fingerprint is not the current one, as GCE does."""
    if body.get("fingerprint") != metadata_fingerprint(current):
        raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")


def checked_items(body: Mapping[str, Any], *, drop: Iterable[str] = ()) -> list[dict[str, str]]:
    """The ``items`` of a Metadata body, checked (400 on a bad one); keys in ``drop`` are left out."""
    items, seen, dropped = [], set(), set(drop)
    for item in body.get("items") or []:
        key = item.get("key") if isinstance(item, Mapping) else None
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key):
            raise ApiError(400, "invalid", f"Invalid value for field 'metadata.items.key': {key!r}. Keys are 1-128 "
                                           "letters, digits, '-' or '_'")
        if key in seen:
            raise ApiError(400, "invalid", f"Duplicate metadata key '{key}'")
        seen.add(key)
        if key not in dropped:
            items.append({"key": key, "value": str(item.get("value", ""))})
    return items
