"""A Compute Engine API emulator: enough of ``compute/v1`` for google-cloud-compute to run unchanged.

Served on 127.0.0.1 (``gcp_url`` in the ready record). Instances: insert, get, list, delete, stop, start,
setMetadata and getGuestAttributes (``hostkeys/``); zone operations get, wait and list with a ``filter``
(``gcp_operations.py``); the project, its common instance metadata, zones, regions with quotas, firewall rules and
global operations (``gcp_project.py``). Any project and zone are accepted for instances; the local cloud's own
config uses project ``dumont-local`` and zone ``local-a``. Requests need no Authorization (clients use
``AnonymousCredentials``); ``<state_dir>/gcp_credentials.json`` says so and where the emulator is.

Each VM is a real pool host ``gcp-<name>`` booted from the ``debian-12`` image (``localcloud/images.py``: no
rsync, root refused over SSH, passwordless sudo for metadata users), on a loopback address of its own: its
external IP (``natIP``), released at a stop and a new one at each start, as an ephemeral IP is. What the guest
agent makes of metadata (``gcp_metadata.py``) is applied at insert, start, ``setMetadata`` and
``setCommonInstanceMetadata``: each non-root ``user:key`` line of ``ssh-keys`` is a login; ``enable-oslogin=TRUE``
leaves none; ``startup-script`` runs as root at every boot. Its SSH port answers only while a firewall rule opens
tcp:22 to it (``gcp_firewalls.py``), re-checked at insert, start and every rule change; a new project has no
rules. Since all VMs share 127.0.0.0/8, each sshd listens on a port of its own, added to the metadata as
``dumont-ssh-port`` (while the host is up).

Status is read live from the host: a running or partitioned host is RUNNING (GCE cannot see a hung guest); a
stopped one is TERMINATED. A *killed* host is what GCE shows when a spot VM's host dies: TERMINATED (spot VMs
never restart automatically) with a ``compute.instances.hostError`` operation, recorded when first seen.

A mutating call does its work and then waits ``$DUMONT_LOCAL_GCP_DELAY_SECONDS`` (default 0.5) inside the request,
and answers with a DONE operation (a failure is the DONE operation's ``error``, as GCE reports it), so Google's own
``ExtendedOperation.result()`` returns without polling: its poller ignores a custom endpoint and would ask
``compute.googleapis.com`` (cloud-apis.md §2.4). Meanwhile the VM shows its transition (PROVISIONING/STAGING,
STOPPING) and ``operations.get/wait/list`` show the operation RUNNING. GCE itself answers before the work is done;
the ``pending`` fault does that for the next calls. ``operations.wait`` answers when the operation is DONE or after
``$DUMONT_LOCAL_GCP_WAIT_SECONDS`` (default 120, like GCE's roughly two minutes). ``dumont local preempt`` gives
``$DUMONT_LOCAL_GCP_PREEMPT_NOTICE_SECONDS`` of notice (default 0; GCE gives 30), then stops the host (disk kept)
or deletes it (termination action DELETE).

Faults (tests drive them over HTTP, like the Vast emulator's)::

    POST /_dumont/faults/nossh    {"next": N}  the next N inserted VMs run, but their sshd never answers
    POST /_dumont/faults/pending  {"next": N}  the next N mutating calls answer at once with a RUNNING operation
    POST /_dumont/faults/clear    disarm every fault
    GET  /_dumont/faults          the armed faults
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dumont.errors import UsageError
from dumont.localcloud.daemon import json_response
from dumont.localcloud.emulators import endpoint_of, gcp_firewalls, gcp_metadata
from dumont.localcloud.emulators.gcp_http import API, ApiError, api_errors, not_found, read_json
from dumont.localcloud.emulators.gcp_operations import Operations, Work
from dumont.localcloud.emulators.gcp_project import ProjectApi, check_fingerprint, checked_items, disk_needs, needs
from dumont.localcloud.emulators.gcp_resources import (
    HOST_ERROR,
    NAME_PATTERN,
    PREEMPTED,
    SSH_PORT_KEY,
    Operation,
    Vm,
    load_record,
    parse_filter,
    save_record,
)
from dumont.localcloud.hosts import HostState
from dumont.transport.keys import write_private

if TYPE_CHECKING:
    from dumont.localcloud.daemon import LocalCloud
    from dumont.localcloud.hosts import LocalHost

PROJECT, ZONE = "dumont-local", "local-a"
CREDENTIALS_TYPE = "dumont_local_emulator"  # read by dumont.providers.gcp.client
DELAY_ENV, WAIT_ENV = "DUMONT_LOCAL_GCP_DELAY_SECONDS", "DUMONT_LOCAL_GCP_WAIT_SECONDS"
NOTICE_ENV = "DUMONT_LOCAL_GCP_PREEMPT_NOTICE_SECONDS"
INSTANCES = API + "/projects/{project}/zones/{zone}/instances"
UP = (HostState.RUNNING, HostState.PARTITIONED)
LIFECYCLE = frozenset({"insert", "start", "stop", "delete", PREEMPTED})  # operations whose status the VM shows
IMAGE = "debian-12"  # what every VM boots from (localcloud/images.py): no rsync, no root login
RECORD_FILE = "gcp_vm.json"  # in the host's directory, so it goes when the host is destroyed
PROJECTS_FILE = "gcp_projects.json"  # in the state directory: firewalls, project metadata and quota limits


@dataclass
class Faults:
    """Faults armed through ``/_dumont/faults``: counts of the next calls they apply to."""

    nossh_next: int = 0  # inserted VMs that run but whose sshd never answers
    pending_next: int = 0  # mutating calls answered at once with a RUNNING operation, as GCE itself does

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return asdict(self)


class GcpEmulator:
    """The Compute API in front of the local host pool."""

    name = "gcp"
    fault_actions = frozenset({"preempt"})

    def __init__(self, cloud: LocalCloud, *, delay: float = 0.5, wait_limit: float = 120.0,
                 preempt_notice: float = 0.0) -> None:
        self.cloud = cloud
        self.preempt_notice = preempt_notice
        self.url = ""
        self.vms: dict[tuple[str, str, str], Vm] = {}
        self.ops = Operations(delay=delay, wait_limit=wait_limit)
        self.ops.before_list = self._notice_dead_hosts
        self.projects = ProjectApi(self.ops, cloud.state_dir / PROJECTS_FILE, self._vms_of, self._project_changed)
        self.faults = Faults()
        self.requests: Counter[tuple[str, str]] = Counter()  # API requests by (method, route), for the benches
        self._runner: web.AppRunner | None = None

    @property
    def delay(self) -> float:
        """Seconds each mutating call takes (inside the request)."""
        return self.ops.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.ops.delay = seconds

    @property
    def wait_limit(self) -> float:
        """Seconds ``operations.wait`` holds a request at most."""
        return self.ops.wait_limit

    @wait_limit.setter
    def wait_limit(self, seconds: float) -> None:
        self.ops.wait_limit = seconds

    async def start(self) -> str:
        """Restore the VMs of a previous run; serve on 127.0.0.1; write the credentials descriptor; return the URL."""
        self._restore()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = self.ops.url = f"http://127.0.0.1:{port}"
        descriptor = {"type": CREDENTIALS_TYPE, "api_endpoint": self.url, "project": PROJECT, "zone": ZONE,
                      "note": "The local GCP Compute emulator takes no credentials: clients send none "
                              "(AnonymousCredentials). This file only says where it is."}
        write_private(self.cloud.state_dir / "gcp_credentials.json", json.dumps(descriptor, indent=2) + "\n")
        return self.url

    async def stop(self) -> None:
        """Stop serving; cancel preemptions still in their notice period and work answered early."""
        await self.ops.cancel_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def app(self) -> web.Application:
        """The Compute routes and the fault routes."""
        app = web.Application(middlewares=[self._count, api_errors])
        app.router.add_post(INSTANCES, self._insert)
        app.router.add_get(INSTANCES, self._list_instances)
        app.router.add_get(INSTANCES + "/{name}", self._get)
        app.router.add_delete(INSTANCES + "/{name}", self._delete)
        app.router.add_post(INSTANCES + "/{name}/{verb}", self._instance_verb)
        app.router.add_get(INSTANCES + "/{name}/getGuestAttributes", self._guest_attributes)
        self.ops.add_routes(app)
        self.projects.add_routes(app)
        app.router.add_get("/_dumont/faults", self._fault_state)
        app.router.add_post("/_dumont/faults/{action}", self._inject)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_dumont/"):
            self.requests[endpoint_of(request)] += 1
        response: web.StreamResponse = await handler(request)
        return response

    # ------------------------------------------------------------------ instances

    async def _insert(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        body = await read_json(request)
        name = str(body.get("name", ""))
        if not NAME_PATTERN.fullmatch(name):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of "
                                           f"regex '{NAME_PATTERN.pattern}'")
        existing = self.vms.get((project, zone, name))
        if (existing and self._status(existing)) or any(h.name == f"gcp-{name}" for h in self.cloud.pool.hosts()):
            raise ApiError(409, "alreadyExists", f"The resource '{_path(project, zone, name)}' already exists")
        body["metadata"] = {"items": checked_items(body.get("metadata") or {}, drop=(SSH_PORT_KEY,))}
        vm = Vm(project, zone, name, body, host=f"gcp-{name}")
        self.vms[(project, zone, name)] = vm

        async def create_host() -> None:
            try:
                self.projects.check_quota(vm, {**needs(vm), **disk_needs(vm)})
                await self.cloud.pool.create(vm.host, authorized_keys=[], role="cpu", provider="gcp",
                                             instance_id=name, image=IMAGE, start=False,
                                             login_users=self._login_users(vm), boot_script=self._boot_script(vm))
                await self._open_or_close(vm)  # before sshd starts: a closed port is never open, even briefly
                await self.cloud.pool.start(vm.host)
            except Exception:
                del self.vms[(project, zone, name)]
                await self._destroy_host(vm)  # a host whose sshd never came up must not block the name
                raise
            vm.last_start = time.time()
            if self.faults.nossh_next > 0:
                self.faults.nossh_next -= 1
                await self.cloud.pool.partition(vm.host)  # the VM runs; its sshd is hung

        return await self._act(vm, "insert", create_host)

    async def _get(self, request: web.Request) -> web.Response:
        vm, status = self._find(request)
        return json_response(self._instance_json(vm, status))

    async def _list_instances(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        keep = _filter(request)
        listed = [(vm, self._status(vm)) for (p, z, _), vm in sorted(self.vms.items()) if (p, z) == (project, zone)]
        items = [self._instance_json(vm, status) for vm, status in listed if status]
        return json_response({"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
                              "items": [i for i in items if keep(i)],
                              "selfLink": f"{self.ops.project_url(project)}/zones/{zone}/instances"})

    async def _delete(self, request: web.Request) -> web.Response:
        vm, _ = self._find(request)

        async def destroy() -> None:
            await self._destroy_host(vm)
            vm.last_stop = time.time()

        return await self._act(vm, "delete", destroy)

    async def _instance_verb(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        if verb not in ("stop", "start", "setMetadata"):
            raise ApiError(400, "invalid", f"Unknown instance method '{verb}'")
        vm, _ = self._find(request)
        if verb == "setMetadata":
            return await self._set_metadata(vm, await read_json(request))
        if verb == "stop":
            return await self._act(vm, verb, lambda: self._stop_host(vm))

        async def start() -> None:
            host = self._host(vm)
            stopped = host is not None and host.state not in UP  # (its status shows this start: STAGING)
            if stopped:
                self.projects.check_quota(vm, needs(vm))  # its CPUs and external IP were given back at the stop
            await self._apply(vm)
            # An ephemeral external IP is released at a stop; the VM comes back on another one.
            await self.cloud.pool.start(vm.host, new_address=stopped)
            vm.last_start = time.time()

        return await self._act(vm, verb, start)

    async def _stop_host(self, vm: Vm) -> None:
        await self.cloud.pool.stop(vm.host)
        vm.last_stop = time.time()

    async def _set_metadata(self, vm: Vm, body: dict[str, Any]) -> web.Response:
        items = checked_items(body, drop=(SSH_PORT_KEY,))  # ours is shown, never stored
        operation = Operation("setMetadata", vm.project, vm.zone, vm.target, vm.id)

        async def apply() -> None:
            vm.body["metadata"] = {"items": items}
            await self._apply(vm)

        return await self.ops.perform(operation, apply, lock=vm.lock, after=lambda: self._save(vm),
                                      check=lambda: check_fingerprint(body, vm.metadata_items))

    async def _guest_attributes(self, request: web.Request) -> web.Response:
        vm, _ = self._find(request)
        query = request.query.get("queryPath", "")
        host = self._host(vm)
        if host is None or not query.startswith("hostkeys/"):
            raise not_found(f"{_path(vm.project, vm.zone, vm.name)}/guestAttributes/{query}")
        kind, _, key = host.host_public_key.partition(" ")
        items = [{"namespace": "hostkeys", "key": kind, "value": key.split(" ")[0]}]
        url = f"{self.ops.project_url(vm.project)}/{vm.target}/guestAttributes"
        return json_response({"kind": "compute#guestAttributes", "queryPath": query, "queryValue": {"items": items},
                              "selfLink": url})

    # ------------------------------------------------------------------ what the guest and the network make of it

    def _login_users(self, vm: Vm) -> dict[str, list[str]]:
        """The logins (user -> keys) the guest agent makes of the VM's and its project's metadata."""
        return gcp_metadata.login_users(vm.metadata_dict, self.projects.get(vm.project).metadata_items)

    def _boot_script(self, vm: Vm) -> str | None:
        """The startup script the VM runs as root at each boot."""
        return gcp_metadata.startup_script(vm.metadata_dict, self.projects.get(vm.project).metadata_items)

    async def _open_or_close(self, vm: Vm) -> None:
        """Let SSH in, or keep it out, as the project's firewall rules decide for the VM's network and tags."""
        rules = self.projects.get(vm.project).firewalls.values()
        await self.cloud.pool.set_reachable(vm.host, gcp_firewalls.ssh_allowed(rules, vm.network, vm.tags))

    async def _apply(self, vm: Vm) -> None:
        """Make the VM's host what its firewall rules and metadata make of a GCE VM, live."""
        if self._host(vm) is None:
            return
        self.cloud.pool.set_login_users(vm.host, self._login_users(vm))
        self.cloud.pool.set_boot_script(vm.host, self._boot_script(vm))
        await self._open_or_close(vm)

    async def _project_changed(self, project: str) -> None:
        for vm in [v for v in self.vms.values() if v.project == project and not v.deleted]:
            async with vm.lock:
                await self._apply(vm)

    def _vms_of(self, project: str) -> list[tuple[Vm, str]]:
        listed = [(vm, self._status(vm)) for vm in list(self.vms.values()) if vm.project == project]
        return [(vm, status) for vm, status in listed if status]

    # ------------------------------------------------------------------ faults

    async def _fault_state(self, request: web.Request) -> web.Response:
        return json_response(self.faults.as_dict())

    async def _inject(self, request: web.Request) -> web.Response:
        action, body = request.match_info["action"], await read_json(request)
        if action == "clear":
            self.faults = Faults()
            return json_response(self.faults.as_dict())
        if action not in ("nossh", "pending"):
            raise ApiError(404, "notFound", f"no fault {action!r}: nossh, pending, clear")
        count = body.get("next", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ApiError(400, "invalid", f'"next" must be a whole number of calls, like 1, not {count!r}')
        setattr(self.faults, f"{action}_next", count)
        return json_response(self.faults.as_dict())

    async def fault(self, action: str, host: LocalHost) -> dict[str, Any]:
        """``preempt``: GCE takes the spot VM back after the notice; TERMINATED with its disk, or deleted."""
        if action not in self.fault_actions:
            raise UsageError(f"{action!r} is not a GCP fault", hint="GCP offers: preempt")
        vm = next((v for v in self.vms.values() if v.host == host.name and self._status(v)), None)
        if vm is None:
            raise UsageError(f"{host.name} is not a VM of the GCP emulator", hint="preempt a host named gcp-...")
        if not vm.is_spot:
            raise UsageError(f"VM {vm.name} is not a spot VM", hint="only provisioningModel SPOT VMs are preempted")
        if (status := self._status(vm)) != "RUNNING":
            raise UsageError(f"VM {vm.name} is {status}, not RUNNING", hint=f"start it first: dumont local start "
                                                                            f"{host.name}")
        task = self.ops.spawn(self._preempt(vm, self._operation(vm, PREEMPTED)))
        if self.preempt_notice <= 0:
            await task
        record: dict[str, Any] = {"name": host.name, "state": "deleted"}
        if (current := self._host(vm)) is not None:
            record = current.as_dict()
        return {**record, "instance_id": vm.name, "gcp_status": self._status(vm) or "NOT_FOUND",
                "notice_seconds": self.preempt_notice}

    async def _preempt(self, vm: Vm, operation: Operation) -> None:
        if self.preempt_notice > 0:
            await asyncio.sleep(self.preempt_notice)  # the guest's ACPI soft-off notice
        async with vm.lock:
            if vm.termination_action == "DELETE":
                await self._destroy_host(vm)
            else:
                await self._stop_host(vm)
            vm.last_stop = time.time()
            operation.finish()
            self._save(vm)

    # ------------------------------------------------------------------ persistence

    def _restore(self) -> None:
        # VMs outlive a restart of the local cloud like their hosts do (the hosts come back killed: TERMINATED).
        self.projects.restore()
        for host in self.cloud.pool.hosts():
            path = host.base / RECORD_FILE
            if host.provider != "gcp" or not path.exists():
                continue
            vm, operations = load_record(json.loads(path.read_text()))
            self.vms[(vm.project, vm.zone, vm.name)] = vm
            for operation in operations:
                self.ops.record(operation)

    def _save(self, vm: Vm) -> None:
        host = self._host(vm)
        if host is None or vm.deleted:
            return
        history = [op for op in self.ops.recorded.values()
                   if (op.project, op.target, op.target_id) == (vm.project, vm.target, vm.id)]
        write_private(host.base / RECORD_FILE, json.dumps(save_record(vm, history)) + "\n", mode=0o644)

    # ------------------------------------------------------------------ helpers

    def _host(self, vm: Vm) -> LocalHost | None:
        return next((h for h in self.cloud.pool.hosts() if h.name == vm.host), None)

    def _status(self, vm: Vm) -> str | None:
        """The VM's status now (None once it is deleted); notices a host that died under it."""
        operation, host = vm.current, self._host(vm)
        if operation is not None and not operation.is_done():
            if operation.kind == "insert":
                return "STAGING" if host is not None and host.state in UP else "PROVISIONING"
            return "STAGING" if operation.kind == "start" else "STOPPING"  # stop, delete, a preemption's notice
        if vm.deleted or host is None:
            vm.deleted = True  # destroyed behind the API's back is deleted all the same
            return None
        if host.state in UP:
            if (vm.last_stop or 0) > (vm.last_start or 0):
                vm.last_start = time.time()  # started behind the API's back (dumont local start)
            return "RUNNING"
        if host.state == HostState.KILLED and (vm.last_stop or 0) < (vm.last_start or 0):
            vm.last_stop = time.time()
            self._operation(vm, HOST_ERROR).finish()
            self._save(vm)
        return "TERMINATED"

    def _notice_dead_hosts(self, project: str, zone: str) -> None:
        for vm in [v for v in self.vms.values() if (v.project, v.zone) == (project, zone)]:
            self._status(vm)  # records hostError operations, so a listing shows them

    def _instance_json(self, vm: Vm, status: str) -> dict[str, Any]:
        host = self._host(vm)
        up = host is not None and host.state in UP and status in ("RUNNING", "STAGING", "STOPPING")
        return vm.as_json(self.ops.project_url(vm.project), status, address=host.address if host else None,
                          ssh_port=host.port if host and up else None)

    async def _destroy_host(self, vm: Vm) -> None:
        if self._host(vm) is not None:
            await self.cloud.pool.destroy(vm.host)
        vm.deleted = True

    async def _act(self, vm: Vm, kind: str, work: Work) -> web.Response:
        """Run one of the VM's lifecycle calls as an operation (``gcp_operations.py``)."""
        early = self.faults.pending_next > 0
        if early:
            self.faults.pending_next -= 1
        return await self.ops.perform(self._operation(vm, kind, record=False), work, lock=vm.lock, early=early,
                                      after=lambda: self._save(vm))

    def _operation(self, vm: Vm, kind: str, *, record: bool = True) -> Operation:
        operation = Operation(kind, vm.project, vm.zone, vm.target, vm.id)
        if record:
            self.ops.record(operation)
        if kind in LIFECYCLE:
            vm.current = operation
        return operation

    def _find(self, request: web.Request) -> tuple[Vm, str]:
        info = request.match_info
        vm = self.vms.get((info["project"], info["zone"], info["name"]))
        status = self._status(vm) if vm else None
        if vm is None or status is None:
            raise not_found(_path(info["project"], info["zone"], info["name"]))
        return vm, status


def _path(project: str, zone: str, name: str) -> str:
    return f"projects/{project}/zones/{zone}/instances/{name}"


def _filter(request: web.Request) -> Callable[[Mapping[str, Any]], bool]:
    try:
        return parse_filter(request.query.get("filter", ""))
    except ValueError as exc:
        raise ApiError(400, "invalid", f"Invalid value for field 'filter': {exc}") from None


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise UsageError(f"{env}={raw!r} is not a number of seconds",
                         hint=f"unset it or use e.g. {default:g}") from None
    if value < 0:
        raise UsageError(f"{env}={raw!r} is negative", hint="use 0 or more seconds")
    return value


def create(cloud: LocalCloud) -> GcpEmulator:
    """The GCP emulator, its timings from the environment."""
    return GcpEmulator(cloud, delay=_seconds(DELAY_ENV, 0.5), wait_limit=_seconds(WAIT_ENV, 120.0),
                       preempt_notice=_seconds(NOTICE_ENV, 0.0))
