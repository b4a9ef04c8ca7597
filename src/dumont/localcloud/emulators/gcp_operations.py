"""The GCP emulator's operations: running a mutating call's work as one, and the zone and global operation routes.

A call's work and then its configured delay run inside the request, and the answer is the DONE operation
(a failure is that operation's ``error``, as GCE reports it), so that Google's ``ExtendedOperation.result()``
never polls: its poller ignores a custom endpoint and would go to ``compute.googleapis.com``
(``research/cloud-apis.md`` §2.4). Asked to answer early (the ``pending`` fault; GCE's own habit), the answer is
the RUNNING operation and the work goes on in the background. Meanwhile get, wait and list show it RUNNING.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from dumont.errors import DumontError
from dumont.localcloud.daemon import json_response
from dumont.localcloud.emulators.gcp_http import API, ApiError, OperationFailed, not_found
from dumont.localcloud.emulators.gcp_resources import Operation, parse_filter

Work = Callable[[], Awaitable[None]]
ZONE_OPERATIONS = API + "/projects/{project}/zones/{zone}/operations"
GLOBAL_OPERATIONS = API + "/projects/{project}/global/operations"


class Operations:
    """Every operation the emulator has recorded, by (project, scope, name); and the work still running."""

    def __init__(self, *, delay: float, wait_limit: float) -> None:
        self.delay, self.wait_limit = delay, wait_limit
        self.url = ""  # the emulator's base URL, once it serves
        self.recorded: dict[tuple[str, str, str], Operation] = {}
        self.before_list: Callable[[str, str], None] = lambda project, zone: None
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        """Zone operations get, wait and list; global operations get and wait."""
        for base in (ZONE_OPERATIONS, GLOBAL_OPERATIONS):
            app.router.add_get(base + "/{operation}", self._get)
            app.router.add_post(base + "/{operation}/wait", self._wait)
        app.router.add_get(ZONE_OPERATIONS, self._list)

    def project_url(self, project: str) -> str:
        """``<url>/compute/v1/projects/<project>``: what resource links start with."""
        return f"{self.url}{API}/projects/{project}"

    def record(self, operation: Operation) -> Operation:
        """Keep ``operation`` so it can be got, waited on and listed."""
        self.recorded[(operation.project, operation.scope, operation.name)] = operation
        return operation

    def answer(self, operation: Operation) -> web.Response:
        """The operation as the API returns it."""
        return json_response(operation.as_json(self.project_url(operation.project)))

    async def perform(self, operation: Operation, work: Work, *, lock: asyncio.Lock, early: bool = False,
                      check: Callable[[], None] = lambda: None,
                      after: Callable[[], None] = lambda: None) -> web.Response:
        """Run ``work`` for ``operation``, then the delay, holding ``lock``; answer DONE (RUNNING at once when
        ``early``). ``check`` runs first under the lock: an :class:`ApiError` from it is the answer, and nothing
        is recorded."""

        async def run() -> None:
            error = None
            try:
                await work()
            except OperationFailed as exc:
                error = exc.error
            except DumontError as exc:
                error = (503, "RESOURCE_OPERATION_FAILED", f"could not {operation.kind} the local host: {exc}")
            await asyncio.sleep(self.delay)  # the time GCE takes; the target shows its transition meanwhile
            operation.finish(error)
            after()

        async def run_locked() -> None:
            async with lock:
                await run()

        async with lock:
            check()
            self.record(operation)
            if not early:
                await run()
                return self.answer(operation)
        self.spawn(run_locked())
        return self.answer(operation)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background until it ends or :meth:`cancel_all`."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        """Cancel the work still running (a preemption in its notice, an early-answered call)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _get(self, request: web.Request) -> web.Response:
        return self.answer(self._find(request))

    async def _wait(self, request: web.Request) -> web.Response:
        operation = self._find(request)
        try:
            async with asyncio.timeout(self.wait_limit):  # GCE answers a wait after about two minutes at most
                await operation.finished.wait()
        except TimeoutError:
            pass
        return self.answer(operation)

    async def _list(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        self.before_list(project, zone)
        try:
            keep = parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            raise ApiError(400, "invalid", f"Invalid value for field 'filter': {exc}") from None
        url, scope = self.project_url(project), f"zones/{zone}"
        items = [op.as_json(url) for (p, s, _), op in self.recorded.items() if (p, s) == (project, scope)]
        return json_response({"kind": "compute#operationList", "id": f"projects/{project}/{scope}/operations",
                              "items": [i for i in items if keep(i)], "selfLink": f"{url}/{scope}/operations"})

    def _find(self, request: web.Request) -> Operation:
        info = request.match_info
        scope = f"zones/{info['zone']}" if "zone" in info else "global"
        operation = self.recorded.get((info["project"], scope, info["operation"]))
        if operation is None:
            raise not_found(f"projects/{info['project']}/{scope}/operations/{info['operation']}")
        return operation
