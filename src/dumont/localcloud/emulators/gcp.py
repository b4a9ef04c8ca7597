"""A Compute Engine API emulator: enough of ``compute/v1`` for google-cloud-compute to run unchanged.

Served on 127.0.0.1 (``gcp_url`` in the ready record): instances insert, get, list, delete, stop, start and
getGuestAttributes (``hostkeys/``); zone operations get, wait and list with a ``filter``. Any project and zone
are accepted; the local cloud's own config uses project ``dumont-local`` and zone ``local-a``. Requests need no
Authorization (clients use ``AnonymousCredentials``); ``<state_dir>/gcp_credentials.json`` says so and where the
emulator is.

Each VM is a real pool host ``gcp-<name>`` whose sshd accepts the keys of the ``ssh-keys`` metadata item. Every
local host has one account (the local user), so the ``user:`` part of a key is not a separate login; that account
is added to the metadata as ``dumont-ssh-user``, and, since all VMs share 127.0.0.1, the SSH port as
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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dumont.errors import DumontError, UsageError
from dumont.localcloud.daemon import json_response
from dumont.localcloud.emulators.gcp_resources import (
    HOST_ERROR,
    NAME_PATTERN,
    PREEMPTED,
    Operation,
    Vm,
    error_body,
    load_record,
    parse_filter,
    save_record,
    ssh_keys,
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
ZONE_PATH = "/compute/v1/projects/{project}/zones/{zone}"
UP = (HostState.RUNNING, HostState.PARTITIONED)
RECORD_FILE = "gcp_vm.json"  # in the host's directory, so it goes when the host is destroyed


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
        self.delay, self.wait_limit, self.preempt_notice = delay, wait_limit, preempt_notice
        self.url = ""
        self.vms: dict[tuple[str, str, str], Vm] = {}
        self.operations: dict[tuple[str, str, str], Operation] = {}
        self.faults = Faults()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Restore the VMs of a previous run; serve on 127.0.0.1; write the credentials descriptor; return the URL."""
        self._restore()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        descriptor = {"type": CREDENTIALS_TYPE, "api_endpoint": self.url, "project": PROJECT, "zone": ZONE,
                      "note": "The local GCP Compute emulator takes no credentials: clients send none "
                              "(AnonymousCredentials). This file only says where it is."}
        write_private(self.cloud.state_dir / "gcp_credentials.json", json.dumps(descriptor, indent=2) + "\n")
        return self.url

    async def stop(self) -> None:
        """Stop serving; cancel preemptions still in their notice period."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def app(self) -> web.Application:
        """The Compute routes."""
        app = web.Application()
        instances, operations = f"{ZONE_PATH}/instances", f"{ZONE_PATH}/operations"
        app.router.add_post(instances, self._insert)
        app.router.add_get(instances, self._list_instances)
        app.router.add_get(instances + "/{name}", self._get)
        app.router.add_delete(instances + "/{name}", self._delete)
        app.router.add_post(instances + "/{name}/{verb}", self._stop_or_start)
        app.router.add_get(instances + "/{name}/getGuestAttributes", self._guest_attributes)
        app.router.add_get(operations, self._list_operations)
        app.router.add_get(operations + "/{operation}", self._get_operation)
        app.router.add_post(operations + "/{operation}/wait", self._wait_operation)
        app.router.add_get("/_dumont/faults", self._fault_state)
        app.router.add_post("/_dumont/faults/{action}", self._inject)
        return app

    # ------------------------------------------------------------------ instances

    async def _insert(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "parseError", "The request body is not valid JSON")
        name = str(body.get("name", "")) if isinstance(body, dict) else ""
        if not NAME_PATTERN.fullmatch(name):
            return _error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of "
                                          f"regex '{NAME_PATTERN.pattern}'")
        existing = self.vms.get((project, zone, name))
        if (existing and self._status(existing)) or any(h.name == f"gcp-{name}" for h in self.cloud.pool.hosts()):
            return _error(409, "alreadyExists", f"The resource '{_path(project, zone, name)}' already exists")
        vm = Vm(project, zone, name, body, host=f"gcp-{name}")
        self.vms[(project, zone, name)] = vm

        async def create_host() -> None:
            try:
                await self.cloud.pool.create(vm.host, authorized_keys=ssh_keys(body), role="cpu", provider="gcp",
                                             instance_id=name)
            except DumontError:
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
        if vm is None or status is None:
            return _not_found(request)
        return json_response(self._instance_json(vm, status))

    async def _list_instances(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        try:
            keep = parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            return _error(400, "invalid", f"Invalid value for field 'filter': {exc}")
        listed = [(vm, self._status(vm)) for (p, z, _), vm in sorted(self.vms.items()) if (p, z) == (project, zone)]
        items = [self._instance_json(vm, status) for vm, status in listed if status]
        return json_response({"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
                              "items": [i for i in items if keep(i)], "selfLink": self._base(project, zone)})

    async def _delete(self, request: web.Request) -> web.Response:
        vm, status = self._find(request)
        if vm is None or status is None:
            return _not_found(request)

        async def destroy() -> None:
            await self._destroy_host(vm)
            vm.last_stop = time.time()

        return await self._act(vm, "delete", destroy)

    async def _stop_or_start(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        if verb not in ("stop", "start"):
            return _error(400, "invalid", f"Unknown instance method '{verb}'")
        vm, status = self._find(request)
        if vm is None or status is None:
            return _not_found(request)

        async def stop_or_start() -> None:
            if verb == "stop":
                await self.cloud.pool.stop(vm.host)
                vm.last_stop = time.time()
            else:
                await self.cloud.pool.start(vm.host)
                vm.last_start = time.time()

        return await self._act(vm, verb, stop_or_start)

    async def _guest_attributes(self, request: web.Request) -> web.Response:
        vm, status = self._find(request)
        query = request.query.get("queryPath", "")
        if vm is None or status is None or not query.startswith("hostkeys/"):
            return _not_found(request)
        kind, _, key = self.cloud.pool.get(vm.host).host_public_key.partition(" ")
        items = [{"namespace": "hostkeys", "key": kind, "value": key.split(" ")[0]}]
        return json_response({"kind": "compute#guestAttributes", "queryPath": query, "queryValue": {"items": items},
                              "selfLink": f"{self._base(vm.project, vm.zone)}/instances/{vm.name}/guestAttributes"})

    # ------------------------------------------------------------------ operations

    async def _get_operation(self, request: web.Request) -> web.Response:
        operation = self._find_operation(request)
        return self._operation_response(operation) if operation else _not_found(request)

    async def _wait_operation(self, request: web.Request) -> web.Response:
        operation = self._find_operation(request)
        if operation is None:
            return _not_found(request)
        try:
            async with asyncio.timeout(self.wait_limit):  # GCE answers a wait after about two minutes at most
                await operation.finished.wait()
        except TimeoutError:
            pass
        return self._operation_response(operation)

    async def _list_operations(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        for vm in [v for v in self.vms.values() if (v.project, v.zone) == (project, zone)]:
            self._status(vm)  # notices dead hosts, so their hostError operations are listed
        try:
            keep = parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            return _error(400, "invalid", f"Invalid value for field 'filter': {exc}")
        url, scope = self._project_url(project), f"zones/{zone}"
        items = [op.as_json(url) for (p, s, _), op in self.operations.items() if (p, s) == (project, scope)]
        return json_response({"kind": "compute#operationList", "id": f"projects/{project}/zones/{zone}/operations",
                              "items": [i for i in items if keep(i)], "selfLink": f"{url}/{scope}/operations"})

    # ------------------------------------------------------------------ faults

    async def _fault_state(self, request: web.Request) -> web.Response:
        return json_response(self.faults.as_dict())

    async def _inject(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _error(400, "parseError", "The request body is not valid JSON")
        if action == "clear":
            self.faults = Faults()
            return json_response(self.faults.as_dict())
        if action not in ("nossh", "pending"):
            return _error(404, "notFound", f"no fault {action!r}: nossh, pending, clear")
        count = body.get("next", 1) if isinstance(body, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return _error(400, "invalid", f'"next" must be a whole number of calls, like 1, not {count!r}')
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
        task = self._spawn(self._preempt(vm, self._operation(vm, PREEMPTED)))
        if self.preempt_notice <= 0:
            await task
        record: dict[str, Any] = {"name": host.name, "state": "deleted"}
        if any(h.name == host.name for h in self.cloud.pool.hosts()):
            record = self.cloud.pool.get(host.name).as_dict()
        return {**record, "instance_id": vm.name, "gcp_status": self._status(vm) or "NOT_FOUND",
                "notice_seconds": self.preempt_notice}

    async def _preempt(self, vm: Vm, operation: Operation) -> None:
        if self.preempt_notice > 0:
            await asyncio.sleep(self.preempt_notice)  # the guest's ACPI soft-off notice
        async with vm.lock:
            if vm.termination_action == "DELETE":
                await self._destroy_host(vm)
            else:
                await self.cloud.pool.stop(vm.host)
            vm.last_stop = time.time()
            operation.finish()
            self._save(vm)

    # ------------------------------------------------------------------ persistence

    def _restore(self) -> None:
        # VMs outlive a restart of the local cloud like their hosts do (the hosts come back killed: TERMINATED).
        for host in self.cloud.pool.hosts():
            path = host.base / RECORD_FILE
            if host.provider != "gcp" or not path.exists():
                continue
            vm, operations = load_record(json.loads(path.read_text()))
            self.vms[(vm.project, vm.zone, vm.name)] = vm
            self.operations.update({(op.project, op.scope, op.name): op for op in operations})

    def _save(self, vm: Vm) -> None:
        host = next((h for h in self.cloud.pool.hosts() if h.name == vm.host), None)
        if host is None or vm.deleted:
            return
        history = [op for op in self.operations.values()
                   if (op.project, op.target, op.target_id) == (vm.project, vm.target, vm.id)]
        write_private(host.base / RECORD_FILE, json.dumps(save_record(vm, history)) + "\n", mode=0o644)

    # ------------------------------------------------------------------ helpers

    def _status(self, vm: Vm) -> str | None:
        """The VM's status now (None once it is deleted); notices a host that died under it."""
        operation = vm.current
        host = next((h for h in self.cloud.pool.hosts() if h.name == vm.host), None)
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

    def _instance_json(self, vm: Vm, status: str) -> dict[str, Any]:
        host = next((h for h in self.cloud.pool.hosts() if h.name == vm.host), None)
        up = host is not None and host.state in UP and status in ("RUNNING", "STAGING", "STOPPING")
        return vm.as_json(self._base(vm.project, vm.zone), status, host.port if host and up else None,
                          host.user if host else "")

    async def _destroy_host(self, vm: Vm) -> None:
        if any(h.name == vm.host for h in self.cloud.pool.hosts()):
            await self.cloud.pool.destroy(vm.host)
        vm.deleted = True

    async def _act(self, vm: Vm, kind: str, work: Callable[[], Awaitable[None]]) -> web.Response:
        """Run a mutating call: its work, then its configured delay, inside the request; answer its operation.

        The answer is DONE (failed work is an error inside the DONE operation, as GCE reports it), unless a
        ``pending`` fault is armed: then it answers RUNNING at once and the work goes on in the background.
        """
        operation = self._operation(vm, kind)

        async def run() -> None:
            async with vm.lock:
                error = None
                try:
                    await work()
                except DumontError as exc:
                    error = (503, "RESOURCE_OPERATION_FAILED", f"could not {kind} the local host: {exc}")
                await asyncio.sleep(self.delay)  # the time GCE takes: status shows the transition meanwhile
                operation.finish(error)
                self._save(vm)

        if self.faults.pending_next > 0:
            self.faults.pending_next -= 1
            self._spawn(run())
        else:
            await run()
        return self._operation_response(operation)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _operation(self, vm: Vm, kind: str) -> Operation:
        operation = Operation(kind, vm.project, vm.zone, vm.target, vm.id)
        self.operations[(vm.project, operation.scope, operation.name)] = operation
        if kind != HOST_ERROR:
            vm.current = operation
        return operation

    def _operation_response(self, operation: Operation) -> web.Response:
        return json_response(operation.as_json(self._project_url(operation.project)))

    def _find(self, request: web.Request) -> tuple[Vm | None, str | None]:
        info = request.match_info
        vm = self.vms.get((info["project"], info["zone"], info["name"]))
        return vm, self._status(vm) if vm else None

    def _find_operation(self, request: web.Request) -> Operation | None:
        info = request.match_info
        scope = f"zones/{info['zone']}" if "zone" in info else "global"
        return self.operations.get((info["project"], scope, info["operation"]))

    def _project_url(self, project: str) -> str:
        return f"{self.url}/compute/v1/projects/{project}"

    def _base(self, project: str, zone: str) -> str:
        return self.url + ZONE_PATH.format(project=project, zone=zone)


def _path(project: str, zone: str, name: str) -> str:
    return f"projects/{project}/zones/{zone}/instances/{name}"


def _error(status: int, reason: str, message: str) -> web.Response:
    return json_response(error_body(status, reason, message), status=status)


def _not_found(request: web.Request) -> web.Response:
    info = request.match_info
    kind, name = ("operations", info["operation"]) if "operation" in info else ("instances", info.get("name", ""))
    resource = f"projects/{info['project']}/zones/{info['zone']}/{kind}/{name}"
    return _error(404, "notFound", f"The resource '{resource}' was not found")


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
