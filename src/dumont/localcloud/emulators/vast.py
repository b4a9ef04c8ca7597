"""The local cloud's Vast.ai API: what the official ``vastai`` CLI 1.9.1 and our provider use, over real hosts.

Served on 127.0.0.1 (its URL is ``vast_url`` in the daemon's ready record). Every answer is JSON with a
Content-Type of exactly ``application/json``: the CLI refuses search results otherwise (cloud-apis.md §0 #2).
What is emulated, how faithfully and from which source: ``docs/local-cloud-vast.md``.

Endpoints (cloud-apis.md §1.3, §1.9)::

    GET    /api/v0/gpu_names/unique/                 no key needed (the CLI calls it at import)
    GET    /api/v0/users/current                     the CLI's role probe
    POST   /api/v0/bundles/  PUT /api/v0/search/asks/   search offers (filter body; "q" for the latter)
    PUT    /api/v0/asks/{offer}/                     rent -> {"success": true, "new_contract": id}
    GET    /api/v1/instances/  GET /api/v0/instances/   list (v1 pages with next_token)
    GET    /api/v0/instances/filters/                distinct status/verification/GPU values
    GET    /api/v0/instances/{id}/                   {"instances": row | null}
    PUT    /api/v0/instances/{id}/                   {"state": "stopped"|"running"} and/or {"label": ...}
    DELETE /api/v0/instances/{id}/                   destroy (host and files)
    POST   /api/v0/instances/{id}/ssh/               attach a public key: root can log in with it from then on
    DELETE /api/v0/instances/{id}/ssh/{key}/         detach it
    GET    /api/v0/ssh/   POST /api/v0/ssh/           the account's keys: list, add (see vast_keys)
    PUT    /api/v0/ssh/{id}/  DELETE /api/v0/ssh/{id}/   change, remove an account key
    PUT    /api/v0/instances/bid_price/{id}/         change bid (an outbid instance resumes when it is high enough)
    PUT    /api/v0/instances/reboot/{id}/            stop the container and boot it again
    PUT    /api/v0/commands/copy_direct/             copy between two instances, a paused source too (vast_copy)

Every other path needs ``Authorization: Bearer <key>`` with the key the emulator keeps in
``<state_dir>/vast_api_key`` (0600, random, kept across restarts); a wrong or missing key gets 401
``{"msg": "Invalid user key"}``. Offers of a rented machine leave the search until the instance is destroyed.

An instance boots like a real one (``vast_boot``): its host, laid out from its image's profile (``vast_images``:
``vast-pytorch``, bare as the pytorch image is), starts only when the pull and boot delay has passed; until then
the API says null, then loading. Root logs in with the account's keys *as they were when the instance was
created* (the account starts with the local cloud's user key) and with whatever is attached later. ``onstart``
runs as root at every start of the container. A reboot, a start after a stop and a resume after an outbid boot
again and may move the instance to another loopback address and port, which the rows report. An image whose tag
is not published never runs: the row stays ``created`` with Docker's "manifest ... not found" (B4).

Fault controls, for drills and tests (same key; each answers the fault state)::

    POST /_dumont/faults/throttle  {"count": N, "retry_after": S | null, "status": 429}
                                   the next N API requests get that status (with Retry-After when S is given)
    POST /_dumont/faults/vanish    {"offer_id": N} gone now, or {"next": N}: the next N rents find their offer gone
    POST /_dumont/faults/nossh     {"next": N}  the next N rented instances boot, but their sshd never answers
    POST /_dumont/faults/outbid    {"instance_id": N}  interruptible only: stopped, data kept, intent unchanged
    POST /_dumont/faults/offline   {"instance_id": N}  the host is killed: the API says offline
    POST /_dumont/faults/clear     no more throttling or vanishing
    GET  /_dumont/faults           the fault state

``dumont local outbid HOST`` and ``dumont local kill HOST`` reach the same faults through the daemon.
Settings: ``DUMONT_LOCAL_VAST_SEED`` (the offer catalogue; default 20260), ``DUMONT_LOCAL_VAST_DELAY_SECONDS``
(how long a new or restarted instance pulls and boots before its host starts, scaled down from Vast's minutes;
default 1, tests use 0: booted before the rent answers) and ``DUMONT_LOCAL_VAST_MIN_INTERVAL_SECONDS`` (Vast's
rate limit: a minimum interval between two requests to one endpoint -- method and route -- from one key, else a
plain-text 429 "API requests too frequent: endpoint threshold=..." with no Retry-After, as the docs describe;
Vast does not publish the interval, so the default is 0: off).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dumont.errors import DumontError, LocalCloudError, UsageError
from dumont.localcloud import layout
from dumont.localcloud.emulators import endpoint_of, vast_images
from dumont.localcloud.emulators import vast_instances as records
from dumont.localcloud.emulators.vast_boot import BootTimers
from dumont.localcloud.emulators.vast_copy import Copies, host_path, instance_number
from dumont.localcloud.emulators.vast_faults import MARKET_FAULTS, Faults
from dumont.localcloud.emulators.vast_http import Refused, json_query, number, read_body, refuse, reply, text
from dumont.localcloud.emulators.vast_instances import VastInstance
from dumont.localcloud.emulators.vast_keys import AccountKeys, checked_public_key
from dumont.localcloud.emulators.vast_market import DEFAULT_SEED, MODELS, generate_catalogue, matches, order_rows
from dumont.localcloud.emulators.vast_market import search as search_offers
from dumont.localcloud.hosts import HostState, LocalHost
from dumont.transport.keys import write_private

if TYPE_CHECKING:
    from dumont.localcloud.daemon import LocalCloud

ENV_SEED = "DUMONT_LOCAL_VAST_SEED"
ENV_DELAY = "DUMONT_LOCAL_VAST_DELAY_SECONDS"
ENV_MIN_INTERVAL = "DUMONT_LOCAL_VAST_MIN_INTERVAL_SECONDS"
DEFAULT_DELAY = 1.0
FIRST_INSTANCE_ID = 30_000_001
OPEN_PATHS = frozenset({"/api/v0/gpu_names/unique/"})
PAGE_LIMIT = 25

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LocalCloudError(f"{name}={raw!r} is not a number",
                              hint=f"unset it or give a number like {default:g}") from None
    if value < 0:
        raise LocalCloudError(f"{name}={raw!r} is negative", hint="give 0 or more")
    return value


class VastEmulator:
    """The Vast.ai API over the local cloud's host pool."""

    name = "vast"
    fault_actions = frozenset({"outbid", "offline"})

    def __init__(self, cloud: LocalCloud, *, seed: int | None = None, delay: float | None = None,
                 min_interval: float | None = None) -> None:
        self.pool = cloud.pool
        self.state_dir = cloud.state_dir
        self.seed = seed if seed is not None else int(_setting(ENV_SEED, DEFAULT_SEED))
        self.delay = delay if delay is not None else _setting(ENV_DELAY, DEFAULT_DELAY)
        self.catalogue = {int(o["id"]): o for o in generate_catalogue(self.seed)}
        self.faults = Faults()
        self.min_interval = min_interval if min_interval is not None else _setting(ENV_MIN_INTERVAL, 0.0)
        self.too_frequent = 0  # requests refused by the per-endpoint rate limit
        self.requests: Counter[tuple[str, str]] = Counter()  # API requests by (method, route), for the benches
        self._last_call: dict[tuple[str, str], float] = {}  # (method, route) -> when it was last served
        self.instances: dict[int, VastInstance] = {}
        self.account_keys = AccountKeys()
        self.key = ""
        self.url = ""
        self._next_id = FIRST_INSTANCE_ID
        self._lock = asyncio.Lock()  # one change at a time: a rent must not race a destroy of the same machine
        self._runner: web.AppRunner | None = None
        self.boot_timers = BootTimers(self._boot)
        self.copies = Copies()
        self._hang_on_boot: set[int] = set()  # nossh: these instances boot with a hung sshd

    @property
    def records_file(self) -> Path:
        """Where instance records persist across daemon restarts."""
        return self.state_dir / "vast" / "instances.json"

    # ------------------------------------------------------------------ Emulator protocol

    async def start(self) -> str:
        """Serve on a free 127.0.0.1 port; return the base URL."""
        self.key = self._ensure_key()
        saved = records.load(self.records_file, FIRST_INSTANCE_ID)
        self.instances, self._next_id = saved.instances, saved.next_id
        # A person's account holds their key from the start: here, the local cloud's user key.
        self.account_keys = saved.account_keys or AccountKeys.seeded(self._user_key())
        await self._resume_boots()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and booting (the hosts are the pool's to stop)."""
        await self.boot_timers.cancel_all()
        await self.copies.cancel_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def fault(self, action: str, host: LocalHost) -> dict[str, Any]:
        """Outbid (interruptible only: stopped, data kept) or take offline (killed) the instance behind ``host``."""
        instance = next((i for i in self.instances.values() if i.host == host.name), None)
        if instance is None:
            raise UsageError(f"{host.name} is not a Vast instance of this local cloud")
        async with self._lock:
            if action == "outbid":
                await self._outbid(instance)
            elif action == "offline":
                self._end_boot(instance)
                await self.pool.kill(host.name)
            else:
                raise UsageError(f"{action!r} is not a Vast fault", hint="use outbid or offline")
            self._save()
        row = self._row(instance)
        vendor = {k: row[k] for k in ("id", "actual_status", "intended_status", "cur_state", "status_msg")}
        return {**self.pool.get(host.name).as_dict(), "vast": vendor}

    async def _outbid(self, instance: VastInstance) -> None:
        if not instance.is_bid:
            raise UsageError(f"instance {instance.id} was rented on demand; only interruptible instances are outbid",
                             hint="rent with a bid price (vastai create instance ... --bid_price P)")
        instance.outbid = True
        self._end_boot(instance)
        await self._stop_host(instance)

    # ------------------------------------------------------------------ plumbing

    def app(self) -> web.Application:
        """The HTTP routes."""
        app = web.Application(middlewares=[self._guard])
        add, v0 = app.router, "/api/v0"
        add.add_get(f"{v0}/gpu_names/unique/", self._gpu_names)
        add.add_get(f"{v0}/users/current", self._user)
        add.add_post(f"{v0}/bundles/", self._search)
        add.add_put(f"{v0}/search/asks/", self._search)
        add.add_put(f"{v0}/asks/{{id:\\d+}}/", self._rent)
        add.add_get("/api/v1/instances/", self._list_v1)
        add.add_get(f"{v0}/instances/", self._list_v0)
        add.add_get(f"{v0}/instances/filters/", self._filters)
        add.add_put(f"{v0}/instances/bid_price/{{id:\\d+}}/", self._change_bid)
        add.add_put(f"{v0}/instances/reboot/{{id:\\d+}}/", self._reboot)
        add.add_get(f"{v0}/instances/{{id:\\d+}}/", self._show)
        add.add_put(f"{v0}/instances/{{id:\\d+}}/", self._manage)
        add.add_delete(f"{v0}/instances/{{id:\\d+}}/", self._destroy)
        add.add_post(f"{v0}/instances/{{id:\\d+}}/ssh/", self._attach)
        add.add_delete(f"{v0}/instances/{{id:\\d+}}/ssh/{{key}}/", self._detach)
        add.add_get(f"{v0}/ssh/", self._show_keys)
        add.add_post(f"{v0}/ssh/", self._create_key)
        add.add_put(f"{v0}/ssh/{{id:\\d+}}/", self._update_key)
        add.add_delete(f"{v0}/ssh/{{id:\\d+}}/", self._delete_key)
        add.add_put(f"{v0}/commands/copy_direct/", self._copy_direct)
        add.add_get("/_dumont/faults", self._fault_state)
        add.add_post("/_dumont/faults/{action}", self._inject)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_dumont/"):
            self.requests[endpoint_of(request)] += 1
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except Refused as exc:
            return refuse(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:  # unknown path or method: JSON too
            return refuse(exc.status, "not_found" if exc.status == 404 else "invalid_request", exc.reason)
        except DumontError as exc:
            return refuse(409, "conflict", str(exc))

    def _refused(self, request: web.Request) -> web.Response | None:
        """The answer to a request refused before its handler: a wrong key, an armed throttle, the rate limit."""
        path = request.path
        if path in OPEN_PATHS:
            return None
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {self.key}".encode()):
            return refuse(401, "invalid_user_key", "Invalid user key")
        if path.startswith("/_dumont/"):
            return None
        if self.faults.throttle_left > 0:
            self.faults.throttle_left -= 1
            after = self.faults.retry_after
            return reply({"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"},
                         self.faults.throttle_status, {"Retry-After": f"{after:g}"} if after is not None else {})
        if self.min_interval > 0 and self._too_frequent(request):
            self.too_frequent += 1
            return web.Response(status=429, text=f"API requests too frequent: endpoint threshold={self.min_interval:g}")
        return None

    def _too_frequent(self, request: web.Request) -> bool:
        """Whether this endpoint was served less than ``min_interval`` ago (else it counts as served now)."""
        key = endpoint_of(request)
        now = time.monotonic()
        if now - self._last_call.get(key, -self.min_interval) < self.min_interval:
            return True
        self._last_call[key] = now
        return False

    def _ensure_key(self) -> str:
        path = self.state_dir / "vast_api_key"
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        key = secrets.token_hex(32)
        write_private(path, key + "\n")
        return key

    def _save(self) -> None:
        records.save(self.records_file, records.Saved(self.instances, self._next_id, self.account_keys))

    def _host(self, instance: VastInstance) -> LocalHost | None:
        return next((h for h in self.pool.hosts() if h.name == instance.host), None)

    def _row(self, instance: VastInstance) -> dict[str, Any]:
        row = records.row(instance, self._host(instance), time.time(), self.delay)
        if instance.id in self.copies.status:
            row["status_msg"] = self.copies.status[instance.id]
        return row

    def _instance(self, request: web.Request) -> VastInstance:
        instance_id = int(request.match_info["id"])
        instance = self.instances.get(instance_id)
        if instance is None:
            raise Refused(404, "no_such_instance", f"Instance {instance_id} not found.")
        return instance

    def _rented_machines(self) -> set[int]:
        return {int(i.offer["machine_id"]) for i in self.instances.values()}

    def _user_key(self) -> list[str]:
        public = layout.user_key(self.state_dir).with_suffix(".pub")
        return [public.read_text().strip()] if public.exists() else []

    async def _stop_host(self, instance: VastInstance) -> None:
        host = self._host(instance)
        if host is not None and host.state in (HostState.RUNNING, HostState.PARTITIONED):
            await self.pool.stop(host.name)

    async def _start_host(self, instance: VastInstance) -> None:
        """(Re)start the instance: it pulls and boots again, and its host starts when that is done."""
        host = self._host(instance)
        if host is None:
            raise Refused(409, "machine_unavailable", f"The machine of instance {instance.id} is gone.")
        if instance.booting or host.state in (HostState.RUNNING, HostState.PARTITIONED):
            return  # already running, or on its way
        await self._begin_boot(instance)

    # ------------------------------------------------------------------ booting (see vast_boot)

    async def _begin_boot(self, instance: VastInstance) -> None:
        instance.started_at = time.time()
        if not instance.can_pull:
            return  # its pull fails every time: nothing will ever start its host
        instance.booting = True
        if self.delay > 0:
            self.boot_timers.arm(instance.id, self.delay)
        else:
            await self._boot_now(instance)  # no delay: booted before the answer, as tests want it

    def _end_boot(self, instance: VastInstance) -> None:
        self.boot_timers.cancel(instance.id)
        instance.booting = False

    async def _boot(self, instance_id: int) -> None:
        """The delay of a boot has passed: start the host (the timers' callback)."""
        async with self._lock:
            instance = self.instances.get(instance_id)
            if instance is not None and instance.booting:
                try:
                    await self._boot_now(instance)
                finally:
                    self._save()  # booted, or failed to (it then reads as exited): either way on record

    async def _boot_now(self, instance: VastInstance) -> None:
        host = self._host(instance)
        try:
            if host is None or host.state == HostState.KILLED:
                return  # the machine died while it was loading: the API says offline
            # A restart may bring the instance back on another address and port (docs: instances/manage-instances,
            # "Some instances have dynamic IPs that may change").
            await self.pool.start(host.name, new_address=instance.boots > 0)
            instance.boots += 1
            if instance.id in self._hang_on_boot:
                self._hang_on_boot.discard(instance.id)
                await self.pool.partition(host.name)  # the machine runs; its sshd is hung
        finally:
            # Loading until the host's sshd has answered: a read while it starts must not see a stopped host
            # and say "exited" (a controller would take the instance for outbid and destroy it).
            instance.booting = False

    async def _resume_boots(self) -> None:
        """After a restart of the local cloud, the instances that were booting go on booting."""
        now = time.time()
        for instance in self.instances.values():
            host = self._host(instance)
            if not instance.booting or host is None:
                continue
            if host.state == HostState.KILLED:
                await self.pool.stop(host.name)  # the shutdown marked it killed; it had not started yet
            self.boot_timers.arm(instance.id, instance.started_at + self.delay - now)

    # ------------------------------------------------------------------ offers

    async def _gpu_names(self, request: web.Request) -> web.Response:
        return reply({"gpu_names": sorted({m.name for m in MODELS})})

    async def _user(self, request: web.Request) -> web.Response:
        return reply({"id": 1, "username": "dumont-local", "email": "local@dumont.invalid", "credit": 100.0,
                      "balance": 0.0, "host_agreement_accepted": False, "fullname": "Dumont local cloud"})

    async def _search(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        query = body.get("q", {}) if request.method == "PUT" else body
        if not isinstance(query, dict):
            raise Refused(400, "invalid_args", "q must be an object of filters")
        rented, gone = self._rented_machines(), self.faults.vanished
        available = [o for o in self.catalogue.values() if o["id"] not in gone and o["machine_id"] not in rented]
        return reply({"offers": search_offers(available, query)})

    async def _rent(self, request: web.Request) -> web.Response:
        offer_id = int(request.match_info["id"])
        body = await read_body(request)
        async with self._lock:
            offer = self.catalogue.get(offer_id)
            if offer is not None and self.faults.vanish_next > 0:
                self.faults.vanish_next -= 1
                self.faults.vanished.add(offer_id)
            if offer is None or offer_id in self.faults.vanished or offer["machine_id"] in self._rented_machines():
                raise Refused(404, "no_such_ask", f"Instance type {offer_id} is not available.")
            instance = records.from_create_body(self._next_id, offer, body)
            self._next_id += 1
            self.instances[instance.id] = instance
            if self.faults.nossh_next > 0 and instance.can_pull and not instance.outbid:
                self.faults.nossh_next -= 1
                self._hang_on_boot.add(instance.id)
            try:
                await self._create_host(instance)
                if not instance.outbid:
                    await self._begin_boot(instance)
            except DumontError:
                self._end_boot(instance)
                del self.instances[instance.id]
                if any(h.name == instance.host for h in self.pool.hosts()):
                    await self.pool.destroy(instance.host)  # a host that never came up is not left behind
                raise
            finally:
                self._save()
        return reply({"success": True, "new_contract": instance.id})

    async def _create_host(self, instance: VastInstance) -> None:
        """The machine's disk, as the image lays it out; the account's keys *now* are root's (Vast copies them
        at creation only), and ``onstart`` runs at every start of the container."""
        published = vast_images.find(instance.image)
        keys = self.account_keys.public_keys()
        await self.pool.create(instance.host, authorized_keys=keys, role="gpu", provider="vast",
                               instance_id=str(instance.id), start=False,
                               image=published.profile if published else vast_images.PYTORCH_PROFILE,
                               login_users={"root": keys}, boot_script=instance.onstart)

    # ------------------------------------------------------------------ instances

    async def _list_v1(self, request: web.Request) -> web.Response:
        rows = [self._row(i) for i in sorted(self.instances.values(), key=lambda i: i.id)]
        rows = [r for r in rows if matches(r, json_query(request, "select_filters", {}))]
        order = [[o["col"], str(o.get("dir", "asc"))] for o in json_query(request, "order_by", [])
                 if isinstance(o, dict) and "col" in o]
        rows = order_rows(rows, order)
        limit = max(1, min(PAGE_LIMIT, int(number(dict(request.query), "limit") or PAGE_LIMIT)))
        start = int(number(dict(request.query), "after_token") or 0)
        more = start + limit < len(rows)
        return reply({"instances": rows[start:start + limit], "next_token": str(start + limit) if more else None,
                      "total_instances": len(rows),
                      "label_counts": dict(Counter(r["label"] or "" for r in rows))})

    async def _list_v0(self, request: web.Request) -> web.Response:
        return reply({"instances": [self._row(i) for i in sorted(self.instances.values(), key=lambda i: i.id)]})

    async def _filters(self, request: web.Request) -> web.Response:
        rows = [self._row(i) for i in self.instances.values()]
        keys = ("actual_status", "verification", "gpu_name", "label")
        return reply({"filters": [dict(t) for t in {tuple((k, r.get(k)) for k in keys) for r in rows}]})

    async def _show(self, request: web.Request) -> web.Response:
        instance = self.instances.get(int(request.match_info["id"]))
        return reply({"instances": None if instance is None else self._row(instance)})

    async def _manage(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        async with self._lock:
            instance = self._instance(request)
            if "label" in body:
                instance.label = text(body["label"])
            state = body.get("state")
            if state == "stopped":
                instance.intended, instance.outbid = "stopped", False
                self._end_boot(instance)
                await self._stop_host(instance)
            elif state == "running" and instance.outbid:
                self._save()
                return reply({"success": False, "msg": f"Instance {instance.id} is outbid; raise its bid "
                                                      "(change bid) to resume it."})
            elif state == "running":
                instance.intended = "running"
                await self._start_host(instance)
            elif state is not None:
                raise Refused(400, "invalid_args", f"state must be running or stopped, not {state!r}")
            self._save()
        return reply({"success": True, "msg": f"Instance {instance.id} updated."})

    async def _destroy(self, request: web.Request) -> web.Response:
        async with self._lock:
            instance = self._instance(request)
            self._end_boot(instance)
            if self._host(instance) is not None:
                await self.pool.destroy(instance.host)
            del self.instances[instance.id]
            self._save()
        return reply({"success": True, "msg": f"Instance {instance.id} destroyed."})

    async def _copy_direct(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        src_id = instance_number(body.get("src_id"), "src_id")
        dst_id = instance_number(body.get("dst_id"), "dst_id")
        async with self._lock:
            source, target = self.instances.get(src_id), self.instances.get(dst_id)
            if source is None or target is None:
                missing = src_id if source is None else dst_id
                raise Refused(404, "no_such_instance", f"Instance {missing} not found.")
            src_host, dst_host = self._host(source), self._host(target)
            if src_host is None or dst_host is None:
                raise Refused(409, "machine_unavailable", "The machine of an instance of the copy is gone.")
            if target.intended != "running" or target.outbid or target.booting:
                raise Refused(400, "invalid_args", f"Instance {dst_id} must be running to receive a copy.")
            src_path = host_path(src_host.workspace, body.get("src_path"), "src_path")
            dst_path = host_path(dst_host.workspace, body.get("dst_path"), "dst_path")
            self.copies.start(src_id, dst_id, src_path, dst_path)  # a paused source is fine: its disk is there
        return reply({"success": True, "msg": "Remote to Remote copy initiated"})

    async def _attach(self, request: web.Request) -> web.Response:
        key = text((await read_body(request)).get("ssh_key"))
        if key is None or not key.startswith("ssh"):
            raise Refused(400, "invalid_args", "ssh_key must be an OpenSSH public key (ssh-ed25519 AAAA...)")
        async with self._lock:
            instance = self._instance(request)
            if self._host(instance) is None:
                raise Refused(409, "machine_unavailable", f"The machine of instance {instance.id} is gone.")
            self.pool.authorize(instance.host, key)
            key_id = str(next((k for k, v in instance.keys.items() if v == key), len(instance.keys) + 1))
            instance.keys[key_id] = key
            self._save()
        return reply({"success": True, "msg": "SSH key attached.", "key_id": key_id})

    async def _detach(self, request: web.Request) -> web.Response:
        async with self._lock:
            instance = self._instance(request)
            key = instance.keys.pop(request.match_info["key"], None)
            host = self._host(instance)
            if key is None:
                raise Refused(404, "not_found", f"Instance {instance.id} has no key {request.match_info['key']}.")
            if host is not None:
                self.pool.deauthorize(host.name, key)
            self._save()
        return reply({"success": True, "msg": "SSH key detached."})

    # ------------------------------------------------------------------ account keys

    async def _show_keys(self, request: web.Request) -> web.Response:
        return reply(self.account_keys.listed())

    async def _create_key(self, request: web.Request) -> web.Response:
        key = checked_public_key((await read_body(request)).get("ssh_key"))
        async with self._lock:
            added = self.account_keys.add(key)
            self._save()
        return reply({"success": True, "key": added.as_created()})

    async def _update_key(self, request: web.Request) -> web.Response:
        key = checked_public_key((await read_body(request)).get("ssh_key"))
        async with self._lock:
            updated = self.account_keys.update(int(request.match_info["id"]), key)
            self._save()
        return reply({"success": True, "key": updated.as_created()})

    async def _delete_key(self, request: web.Request) -> web.Response:
        async with self._lock:
            self.account_keys.delete(int(request.match_info["id"]))
            self._save()
        return reply({"success": True})

    # ------------------------------------------------------------------ instances, continued

    async def _change_bid(self, request: web.Request) -> web.Response:
        price = number(await read_body(request), "price")
        async with self._lock:
            instance = self._instance(request)
            if not instance.is_bid or price is None or price <= 0:
                raise Refused(400, "invalid_args", f"instance {instance.id} is not interruptible, or price is bad")
            instance.bid_price = price
            if instance.outbid and price >= float(instance.offer["min_bid"]) and instance.intended == "running":
                instance.outbid = False  # the highest bid runs again
                await self._start_host(instance)
            self._save()
        return reply({"success": True, "msg": f"Bid of instance {instance.id} set to {price:g}."})

    async def _reboot(self, request: web.Request) -> web.Response:
        async with self._lock:
            instance = self._instance(request)
            self._end_boot(instance)
            await self._stop_host(instance)
            await self._start_host(instance)
            self._save()
        return reply({"success": True, "msg": f"Instance {instance.id} rebooting."})

    # ------------------------------------------------------------------ faults

    async def _fault_state(self, request: web.Request) -> web.Response:
        return reply(self.faults.as_dict())

    async def _inject(self, request: web.Request) -> web.Response:
        action, body = request.match_info["action"], await read_body(request)
        if action in MARKET_FAULTS:
            self.faults.arm(action, body)
        elif action == "clear":
            self.faults = Faults()
        elif action in self.fault_actions:
            instance = self.instances.get(int(number(body, "instance_id") or 0))
            if instance is None or self._host(instance) is None:
                raise Refused(404, "no_such_instance", f"no running instance {body.get('instance_id')!r}")
            await self.fault(action, self.pool.get(instance.host))
        else:
            raise Refused(404, "not_found", f"no fault {action!r}: throttle, vanish, nossh, outbid, offline, clear")
        return reply(self.faults.as_dict())


def create(cloud: LocalCloud) -> VastEmulator:
    """The Vast emulator for ``cloud``."""
    return VastEmulator(cloud)
