"""The endpoint process's server: one relay per pair, the routes file, and the control socket.

It owns an endpoint directory (flock, see :mod:`dumont.endpoint.lock`), restores every saved route when it starts,
answers the JSON-line requests of :mod:`dumont.endpoint.protocol` and saves each change to ``routes.json`` before
it answers. Requests that change something run one at a time; ``status``, ``ping`` and ``heartbeat`` do not wait
for them.

A hold belongs to a running controller: a hold is refused while no controller is heard, and every hold is
released when the controller falls silent past its deadline, so that an endpoint without a controller serves the
last published primary instead of parking users until their connections time out. A route served with
``"fall_through": true`` is refused instead while no controller is heard (new connections closed at once): in a
fleet, each controller's endpoint serves every pair, and the users' ``ssh`` falls through to one whose controller
is alive, since a silent one's routes go stale as soon as another controller fails the pair over.

``status`` answers::

    {"pid", "dir", "started_at", "now" (wall clock), "clock" (monotonic, the clock of every "at"),
     "controller" (pid or null), "controller_seen_at" (wall clock or null), "controller_present",
     "controller_silent_for", "controller_expect_within", "summary" (one sentence),
     "pairs": {name: {"listen", "address", "listening", "error", "target", "epoch", "reason",
                      "hold_timeout", "held", "fall_through", "stats" (RelayStats fields or null),
                      "history": [switch, ...]}}}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dumont.endpoint.layout import EndpointLayout
from dumont.endpoint.lock import DirectoryLock
from dumont.endpoint.protocol import (
    MAX_REQUEST,
    Message,
    address_to_wire,
    decode,
    encode,
    error_answer,
    flag_field,
    int_field,
    number_field,
    stats_to_wire,
    switch_to_wire,
    target_field,
    text_field,
)
from dumont.endpoint.relay import Address, EndpointRelay
from dumont.endpoint.routes import Route, check_pair_name, load_routes, parse_listen, save_routes
from dumont.endpoint.watch import Change, ControllerWatch
from dumont.errors import DumontError, EndpointError, UsageError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Handler = Callable[[Message], Awaitable[Message]]

DEFAULT_HOLD_TIMEOUT = 30.0
# A control connection that sends nothing for this long is closed; the controller opens one per request.
_IDLE = 60.0
_CLOSE_GRACE = 5.0
_CONCURRENT = frozenset({"ping", "status", "heartbeat"})


@dataclass
class _Served:
    """A pair this process serves: its route and, once bound, its relay (or why it could not bind)."""

    route: Route
    relay: EndpointRelay | None
    error: str = ""


class EndpointServer:
    """Every pair's relay in one endpoint directory, controlled over ``DIR/control.sock``."""

    def __init__(
        self, root: Path, *, clock: Clock = time.monotonic, wall: Clock = time.time, connect_timeout: float = 5.0
    ) -> None:
        self.layout = EndpointLayout(root)
        self.connect_timeout = connect_timeout
        self.shutdown_requested = asyncio.Event()
        self._clock, self._wall = clock, wall
        self._started_wall = wall()
        self._watch = ControllerWatch(started_at=clock())
        self._pairs: dict[str, _Served] = {}
        self._lock = DirectoryLock(self.layout.lock)
        self._server: asyncio.Server | None = None
        self._conversations: set[asyncio.Task[None]] = set()
        self._changing = asyncio.Lock()
        self._heard = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._handlers: dict[str, Handler] = {
            "ping": self._ping, "serve": self._serve, "route": self._route, "hold": self._hold,
            "release": self._release, "close_existing": self._close_existing, "status": self._status,
            "heartbeat": self._heartbeat, "forget": self._forget, "shutdown": self._shutdown,
        }

    # -- life cycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the directory's lock, restore every saved route, and answer on the control socket."""
        self.layout.create()
        self._lock.acquire()
        try:
            for route in load_routes(self.layout.routes):
                await self._restore(route)
            socket_path = self.layout.control_socket
            socket_path.unlink(missing_ok=True)  # left by a process that was killed; the lock says it is gone
            self._server = await asyncio.start_unix_server(self._accept, path=str(socket_path), limit=MAX_REQUEST)
            os.chmod(socket_path, 0o600)
        except BaseException:
            await self._stop_relays()
            self._lock.release()
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_controller(), name="endpoint watchdog")
        log.info("endpoint process %d serves %d pair(s) from %s", os.getpid(), len(self._pairs), self.layout.root)

    async def stop(self) -> None:
        """Stop answering, stop every relay (closing their connections), and let the directory go."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        for task in self._conversations:
            task.cancel()
        if self._conversations:
            await asyncio.wait(list(self._conversations), timeout=_CLOSE_GRACE)
        await server.wait_closed()
        await self._stop_relays()
        self.layout.control_socket.unlink(missing_ok=True)
        self._lock.release()
        log.info("endpoint process %d stopped", os.getpid())

    async def _stop_relays(self) -> None:
        for served in self._pairs.values():
            if served.relay is not None:
                await served.relay.stop()

    def relay(self, pair: str) -> EndpointRelay:
        """The relay serving ``pair`` (tests wait on it); raise DumontError when the pair is not listening."""
        return self._listening({"op": "relay", "pair": pair})[1]

    # -- the controller ---------------------------------------------------------------------------------------

    async def _watch_controller(self) -> None:
        while True:
            self._heard.clear()
            deadline = self._watch.deadline()
            delay = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._heard.wait()
            self.look_at_controller()

    def look_at_controller(self) -> None:
        """If the controller has just fallen silent, say so once and release every hold it left."""
        now = self._clock()
        if self._watch.look(now) is not Change.LEFT:
            return
        reason = f"no controller for {self._watch.silent_for(now):.0f} s"
        held = [s.relay for s in self._pairs.values() if s.relay is not None and s.relay.stats().held]
        for relay in held:
            relay.release(reason=f"{reason}; serving the last published route")
        refused = [s.relay for s in self._pairs.values() if s.relay is not None and s.route.fall_through]
        for relay in refused:
            relay.refuse(reason=f"{reason}; another controller's endpoint serves the pair")
        log.warning("%s (last: pid %s); serving the last published routes%s%s", reason, self._watch.pid,
                    f", {len(held)} hold(s) released" if held else "",
                    f", {len(refused)} refused for the fleet's other endpoints" if refused else "")

    def _serve_refused(self) -> None:
        """A controller is heard: the routes refused while none was are served again."""
        for served in self._pairs.values():
            if served.relay is not None and served.relay.stats().refusing:
                served.relay.serve_again(reason=f"controller {self._watch.pid} is heard")

    def _note_controller(self, message: Message) -> None:
        if "controller" not in message:
            return
        pid = int_field(message, "controller")
        expect = number_field(message, "expect_within") if "expect_within" in message else None
        previous = self._watch.pid
        change = self._watch.heard(pid, now=self._clock(), wall=self._wall(), expect_within=expect)
        self._heard.set()
        if change is Change.ARRIVED:
            log.info("controller %d is heard; it expects to send again within %g s", pid, self._watch.expect_within)
            self._serve_refused()
        elif change is Change.REPLACED:
            log.info("controller %d took over from controller %s", pid, previous)

    # -- the control socket -----------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so that the task is ours to cancel and await in stop().
        task = asyncio.get_running_loop().create_task(self._converse(reader, writer), name="endpoint control")
        self._conversations.add(task)
        task.add_done_callback(self._conversations.discard)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self.shutdown_requested.is_set():
                async with asyncio.timeout(_IDLE):
                    line = await reader.readline()
                if not line:
                    break
                writer.write(encode(await self.answer(line)))
                await writer.drain()
        except ValueError:  # a line longer than MAX_REQUEST
            writer.write(encode(error_answer(UsageError(f"a control line is longer than {MAX_REQUEST} bytes"))))
        except (TimeoutError, ConnectionError) as exc:
            log.debug("endpoint control connection ended: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await writer.wait_closed()

    async def answer(self, line: bytes) -> Message:
        """The answer to one request line (errors become ``{"ok": false, ...}``, never an exception)."""
        op = "request"
        try:
            message = decode(line)
            op = text_field(message, "op")
            handler = self._handlers.get(op)
            if handler is None:
                raise UsageError(f"unknown control op {op!r}", hint=f"one of: {', '.join(sorted(self._handlers))}")
            self._note_controller(message)
            if op in _CONCURRENT:
                return {"ok": True, **await handler(message)}
            async with self._changing:
                return {"ok": True, **await handler(message)}
        except DumontError as exc:
            return error_answer(exc)
        except Exception as exc:
            log.exception("endpoint: %s failed unexpectedly", op)
            return error_answer(exc)

    # -- requests ---------------------------------------------------------------------------------------------

    async def _ping(self, message: Message) -> Message:
        return {"pid": os.getpid()}

    async def _serve(self, message: Message) -> Message:
        pair = check_pair_name(message.get("pair"))
        listen = text_field(message, "listen")
        address = parse_listen(listen)
        hold_timeout = number_field(message, "hold_timeout", default=DEFAULT_HOLD_TIMEOUT)
        fall_through = flag_field(message, "fall_through")
        served = self._pairs.get(pair)
        if served is None:
            route = Route(pair, listen, hold_timeout, fall_through=fall_through)
            relay = await self._bind(route, address)
            self._pairs[pair] = served = _Served(replace(route, address=relay.address), relay)
        elif served.relay is None or served.route.listen != listen:
            # A new listen address (or a retry after a failed restore): bind first, so a failure leaves the old one.
            relay = await self._bind(replace(served.route, hold_timeout=hold_timeout), address)
            old, served.relay, served.error = served.relay, relay, ""
            served.route = replace(served.route, listen=listen, address=relay.address, hold_timeout=hold_timeout)
            if old is not None:
                await old.stop()
        else:
            relay = served.relay
            relay.hold_timeout = hold_timeout
            served.route = replace(served.route, hold_timeout=hold_timeout)
        served.route = replace(served.route, fall_through=fall_through)
        if not fall_through or self._watch.is_present(self._clock()):
            relay.serve_again(reason="served by a controller")
        await self._save()
        return {"address": address_to_wire(relay.address), "endpoint": self._pair_status(served)}

    async def _route(self, message: Message) -> Message:
        served = self._served(message)
        target = target_field(message)
        reason = text_field(message, "reason", default="")
        route = served.route.routed(target, epoch=int_field(message, "epoch"), reason=reason)
        changed = route.target != served.route.target
        if served.relay is not None:
            served.relay.point_to(target, reason=reason)
        if route != served.route:
            served.route = route
            await self._save()
        return {"changed": changed, "endpoint": self._pair_status(served)}

    async def _hold(self, message: Message) -> Message:
        served, relay = self._listening(message)
        if not self._watch.is_present(self._clock()):
            raise EndpointError(
                f"endpoint {relay.name}: no controller is heard, so a hold would never be released",
                hint='send "controller": <pid> with the hold, or a heartbeat first',
            )
        relay.hold(reason=text_field(message, "reason", default=""))
        return {"held": True, "endpoint": self._pair_status(served)}

    async def _release(self, message: Message) -> Message:
        served, relay = self._listening(message)
        relay.release(reason=text_field(message, "reason", default=""))
        return {"held": False, "endpoint": self._pair_status(served)}

    async def _close_existing(self, message: Message) -> Message:
        served, relay = self._listening(message)
        closed = relay.close_existing(reason=text_field(message, "reason", default=""))
        return {"closed": closed, "endpoint": self._pair_status(served)}

    async def _heartbeat(self, message: Message) -> Message:
        int_field(message, "controller")  # already noted; this only insists on it
        return {"pid": os.getpid()}

    async def _forget(self, message: Message) -> Message:
        pair = check_pair_name(message.get("pair"))
        served = self._pairs.pop(pair, None)
        if served is None:
            return {"forgotten": False}
        if served.relay is not None:
            await served.relay.stop()
        await self._save()
        log.info("endpoint %s forgotten: its route is no longer served or saved", pair)
        return {"forgotten": True}

    async def _shutdown(self, message: Message) -> Message:
        log.info("endpoint process %d asked to shut down", os.getpid())
        self.shutdown_requested.set()
        return {"pid": os.getpid()}

    async def _status(self, message: Message) -> Message:
        names = [self._served(message).route.pair] if "pair" in message else sorted(self._pairs)
        now = self._clock()
        watch = self._watch
        return {
            "pid": os.getpid(), "dir": str(self.layout.root), "started_at": self._started_wall, "now": self._wall(),
            "clock": now, "controller": watch.pid, "controller_seen_at": watch.seen_wall,
            "controller_present": watch.is_present(now), "controller_silent_for": round(watch.silent_for(now), 3),
            "controller_expect_within": watch.expect_within, "summary": watch.summary(now),
            "pairs": {name: self._pair_status(self._pairs[name]) for name in names},
        }

    # -- helpers ----------------------------------------------------------------------------------------------

    def _pair_status(self, served: _Served) -> Message:
        route, relay = served.route, served.relay
        stats = relay.stats() if relay is not None else None
        return {
            "listen": route.listen, "address": address_to_wire(relay.address if relay else route.address),
            "listening": relay is not None, "error": served.error, "target": address_to_wire(route.target),
            "epoch": route.epoch, "reason": route.reason, "hold_timeout": route.hold_timeout,
            "held": bool(stats and stats.held), "fall_through": route.fall_through,
            "stats": stats_to_wire(stats) if stats else None,
            "history": [switch_to_wire(s) for s in relay.history] if relay else [],
        }

    def _served(self, message: Message) -> _Served:
        pair = check_pair_name(message.get("pair"))
        served = self._pairs.get(pair)
        if served is None:
            raise UsageError(f"endpoint {pair} is not served here", hint='send "serve" for it first')
        return served

    def _listening(self, message: Message) -> tuple[_Served, EndpointRelay]:
        served = self._served(message)
        if served.relay is None:
            raise EndpointError(f"endpoint {served.route.pair} is not listening: {served.error}",
                                hint='send "serve" again once the address is free')
        return served, served.relay

    async def _bind(self, route: Route, address: Address, *, reason: str | None = None) -> EndpointRelay:
        relay = EndpointRelay(route.pair, address, connect_timeout=self.connect_timeout,
                              hold_timeout=route.hold_timeout)
        await relay.start()
        if route.target is not None:
            relay.point_to(route.target, reason=reason or route.reason)
        return relay

    async def _restore(self, route: Route) -> None:
        try:
            relay = await self._bind(route, route.bind_address(), reason=f"restored from routes.json: {route.reason}")
        except DumontError as exc:
            log.error("endpoint %s could not be restored on %s: %s", route.pair, route.listen, exc)
            self._pairs[route.pair] = _Served(route, None, error=str(exc))
            return
        if route.fall_through:  # no controller is heard yet: the fleet's other endpoints serve the pair meanwhile
            relay.refuse(reason="no controller heard since the endpoint started")
        self._pairs[route.pair] = _Served(replace(route, address=relay.address), relay)

    async def _save(self) -> None:
        routes = [s.route for s in self._pairs.values()]
        try:
            await asyncio.to_thread(save_routes, self.layout.routes, routes)
        except OSError as exc:
            raise EndpointError(
                f"the routes file {self.layout.routes} could not be written ({exc.strerror or exc}); the change is "
                "served but a restarted endpoint would not know it",
                hint=f"free space or fix permissions in {self.layout.root}, then publish again",
            ) from exc

