"""The controller's HTTP API (localhost, bearer token): status, events, and intents.

Writes only record intent: ``POST /api/pairs/{pair}/intents/{kind}`` validates, stores the request, wakes the
loop and answers 202. The loop decides and acts, and the outcome appears in the event log and in the intent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dumont.core.controller import Controller
from dumont.core.pair import PairRuntime, rpo_estimate
from dumont.errors import DumontError

INTENTS = ("failover", "sync", "recover", "pause", "resume")
SHUTDOWN_SECONDS = 1.0
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id names nothing
EVENT_PAGE = 500  # the most events one answer carries; a client pages on with ?after=
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Extension = Callable[[web.Application], None]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.Response(body=json.dumps(data, default=str).encode(), status=status,
                        headers={"Content-Type": "application/json"})


def pair_status(controller: Controller, rt: PairRuntime) -> dict[str, Any]:
    """One pair as ``status --json`` shows it (SPEC §4.7)."""
    now = controller.ctx.clock()
    on_change = controller.ctx.config.replication.on_change
    last = controller.ctx.store.last_pass(rt.name)
    try:
        host, port = rt.endpoint.address
    except DumontError:
        host, port = "", 0
    op = rt.operation
    return {
        "name": rt.name,
        "state": str(rt.state),
        "epoch": rt.epoch,
        "endpoint": f"{host}:{port}",
        "primary": rt.primary.as_dict() if rt.primary else None,
        "standby": rt.standby.as_dict() if rt.standby else None,
        "last_sync": {"time": last["finished_at"], "epoch": last["epoch"], "seq": last["seq"],
                      "snapshot_seq": last["snapshot_seq"], "bytes_sent": last["bytes_sent"]} if last else None,
        "lag_seconds": round(now - rt.sync.last_good_at, 3) if rt.sync.last_good_at else None,
        "rpo_estimate_seconds": _rounded(rpo_estimate(rt, now, on_change=on_change)),
        "sync_failures": rt.sync.consecutive_failures,
        "operation": {"kind": op.kind, "step": op.step, "started_at": op.started_at, "finished": op.finished,
                      "error": op.error, "progress": dict(op.progress) if op.progress else None} if op else None,
        "reason": rt.last_reason,
        "endpoint_switches": [{"at": s.at, "target": list(s.target) if s.target else None, "reason": s.reason}
                              for s in rt.endpoint.history],
    }


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


class ApiServer:
    """Serves the API for one controller on ``host:port``."""

    def __init__(self, controller: Controller, token: str, host: str, port: int,
                 extensions: tuple[Extension, ...] = ()) -> None:
        self.controller = controller
        self.token = token
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None
        self._new_event = asyncio.Condition()
        self.extensions = extensions
        controller.ctx.listeners.append(self._on_event)

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._errors, self._auth])
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/pairs/{pair}/intents/{kind}", self._intent)
        app.router.add_get("/api/intents/{id}", self._intent_state)
        for extend in self.extensions:
            extend(app)
        return app

    async def start(self) -> None:
        """Start serving (port 0 picks a free port)."""
        # Long polls (the dashboard, `events --follow`) would otherwise hold a stop for their whole wait: a
        # request still running after this many seconds is cancelled.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _on_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        async def notify() -> None:
            async with self._new_event:
                self._new_event.notify_all()

        asyncio.get_running_loop().create_task(notify())

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A bug in a handler is one internal_error event and a 500, never a dead API or a traceback per call."""
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as exc:
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
            self.controller.ctx.internal_errors.report(f"the API's {request.method} {route}", exc)
            return json_response({"error": "internal error; it was reported in the controller's log and events"},
                                 status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path == "/healthz" or getattr(handler, "public", False)
        if not public and not self._token_ok(request):
            return json_response({"error": "missing or wrong API token",
                                  "hint": "send Authorization: Bearer <token from the controller's api_token file>"},
                                 status=401)
        return await handler(request)

    def _token_ok(self, request: web.Request) -> bool:
        """``Authorization: Bearer <token>`` (the scheme in any case, RFC 6750) or ``?token=`` (the dashboard)."""
        scheme, _, supplied = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            supplied = request.query.get("token", "")
        # Compared as bytes: a token with characters outside ASCII is a wrong token, not a crash.
        return hmac.compare_digest(supplied.strip().encode("utf-8", "surrogateescape"), self.token.encode())

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "ticks": self.controller.ticks})

    def status(self) -> dict[str, Any]:
        """The whole controller's status."""
        return {
            "api_url": self.url, "metrics_url": f"{self.url}/metrics", "dashboard_url": f"{self.url}/",
            # In a fleet each controller shows the pairs whose lease it holds; the others show theirs.
            "controller": {"name": self.controller.ctx.controller_id, "ticks": self.controller.ticks,
                           "pairs_configured": len(self.controller.ctx.config.pairs)},
            "pairs": [pair_status(self.controller, rt) for rt in self.controller.pairs.values()],
        }

    async def _status(self, request: web.Request) -> web.Response:
        return json_response(self.status())

    async def _events(self, request: web.Request) -> web.Response:
        store = self.controller.ctx.store
        try:
            after = int(request.query.get("after", "0"))
            wait = float(request.query.get("wait", "0"))
            last = int(request.query.get("last", "0"))
        except ValueError:
            after, wait, last = -1, -1.0, -1
        if not 0 <= after <= MAX_ID or not (math.isfinite(wait) and wait >= 0) or not 0 <= last <= EVENT_PAGE:
            return json_response({"error": "after must be an event id (0 or more), wait a number of seconds and "
                                           f"last a count from 1 to {EVENT_PAGE}",
                                  "hint": "e.g. ?after=120&wait=25, or ?last=50 for the newest 50"}, status=400)
        wait = min(60.0, wait)
        pair = request.query.get("pair")
        # Paging: ?after=ID gives the next EVENT_PAGE events in order; ?last=N the newest N (hostile-review #12).
        events = store.events(after=after, pair=pair, limit=last or EVENT_PAGE, newest=bool(last))
        if not events and wait > 0:
            try:
                async with asyncio.timeout(wait), self._new_event:
                    await self._new_event.wait_for(lambda: bool(store.events(after=after, pair=pair, limit=1)))
            except TimeoutError:
                pass
            events = store.events(after=after, pair=pair)
        return json_response({"events": [e.as_dict() for e in events], "last_id": store.last_event_id(),
                              "page_size": EVENT_PAGE})

    async def _intent(self, request: web.Request) -> web.Response:
        pair, kind = request.match_info["pair"], request.match_info["kind"]
        if pair not in self.controller.pairs:
            return json_response({"error": f"no pair {pair!r}", "hint": f"pairs: {', '.join(self.controller.pairs)}"},
                                 status=404)
        if kind not in INTENTS:
            return json_response({"error": f"unknown intent {kind!r}", "hint": f"one of {', '.join(INTENTS)}"},
                                 status=400)
        intent_id = self.controller.ctx.store.add_intent(pair, kind)
        self.controller.ctx.event(pair, "intent", f"an operator asked to {kind}", {"intent": intent_id})
        self.controller.wake()
        return json_response({"intent": intent_id, "pair": pair, "kind": kind, "accepted": True}, status=202)

    async def _intent_state(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        row = self.controller.ctx.store.intent(int(raw)) if raw.isdigit() and int(raw) <= MAX_ID else None
        if row is None:
            return json_response({"error": "no such intent"}, status=404)
        return json_response({"intent": row.id, "pair": row.pair, "kind": row.kind, "consumed_at": row.consumed_at,
                              "outcome": row.outcome})
