"""The stable endpoint: a TCP relay on the controller that forwards each new connection to the current primary.

Switching is a pointer swap (:meth:`EndpointRelay.point_to`): connections already relayed stay where they are
until :meth:`EndpointRelay.close_existing` ends them, new ones go to the new target. Because every host of a pair
presents the pair's own SSH host key, the user's client sees the same server before and after a failover.

Behaviour decided here:

- **Half-close.** End of stream from one side becomes ``write_eof`` on the other; the opposite direction stays
  open until it ends too. A connection is closed when both directions have ended or either one fails.
- **Refusing.** While :meth:`EndpointRelay.refuse` is in force, a new connection is closed as soon as it is
  accepted, before a byte is sent: the users' ``ssh`` falls through to the next endpoint of a fleet
  (``endpoint/fallthrough.py``). Connections already relayed go on.
- **Parking.** While the relay is held, or has no target, new connections are accepted and parked: they wait
  until the relay is released *and* has a target, then go to the target current at that moment. A parked
  connection waits at most ``hold_timeout`` seconds from its arrival, then is closed.
- **Backpressure.** Each direction reads at most 64 KiB and awaits ``drain`` before reading more, so a slow
  reader slows its writer instead of growing a buffer.
- **Logging.** Transitions (switch, hold, release, the first failed connect of a streak) are logged once at
  INFO or WARNING and passed to ``on_event``; single connections are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from dumont.errors import DumontError, UsageError

log = logging.getLogger(__name__)

Address = tuple[str, int]
EventCallback = Callable[[str, str], None]

_CHUNK = 64 * 1024
_HISTORY = 32
# How long a finished connection may take to flush its last bytes before it is aborted: a peer that stopped
# reading must not keep a socket open forever.
_LINGER = 5.0
# stop() cancels every connection; their clean-up has no slow step, so this bound is only a safety net.
_STOP_GRACE = 5.0


@dataclass(frozen=True)
class Switch:
    """One change of the relay's target, kept for reports."""

    at: float  # time.monotonic()
    target: Address | None
    reason: str


@dataclass(frozen=True)
class RelayStats:
    """A snapshot of the relay's state and counters."""

    active: int  # connections given a target (connecting or relaying)
    parked: int  # connections waiting for a target or for release
    accepted: int
    failed_connects: int
    timed_out: int  # parked connections closed after hold_timeout
    bytes_in: int  # from clients to targets
    bytes_out: int  # from targets to clients
    target: Address | None
    held: bool
    switched_at: float | None
    switch_reason: str
    refused: int = 0  # new connections closed at once while refusing
    refusing: str = ""  # why new connections are refused now ("": they are not)


class _Connection:
    """One client connection and, once it has a target, its upstream."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.reader = reader
        self.client = writer
        self.upstream: asyncio.StreamWriter | None = None
        self.upstream_reader: asyncio.StreamReader | None = None
        self.target: Address | None = None
        self.parked = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """Drop both sides at once, discarding anything not yet sent."""
        self.closed = True
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


async def _wait_closed(writers: list[asyncio.StreamWriter]) -> None:
    # An aborted transport closes its socket on the loop's next turn; wait for that so stop() leaves nothing open.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_STOP_GRACE):
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def _show(address: Address | None) -> str:
    return "nothing" if address is None else f"{address[0]}:{address[1]}"


class EndpointRelay:
    """Forwards each new TCP connection on ``listen`` to the current target, with hold and switch."""

    def __init__(
        self,
        name: str,
        listen: Address,
        *,
        connect_timeout: float = 5.0,
        hold_timeout: float = 30.0,
        on_event: EventCallback | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.connect_timeout = connect_timeout
        self.hold_timeout = hold_timeout
        self.on_event = on_event
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._target: Address | None = None
        self._held = False
        self._open = asyncio.Event()  # set while new connections may go straight to a target
        self._changed = asyncio.Event()  # replaced on every change; waiters hold the one they saw
        self._connections: set[_Connection] = set()
        self._history: deque[Switch] = deque(maxlen=_HISTORY)
        self._switched_at: float | None = None
        self._switch_reason = ""
        self._accepted = self._failed_connects = self._timed_out = 0
        self._bytes_in = self._bytes_out = 0
        self._failing = False  # inside a streak of failed connects (logged once)
        self._refusing = ""  # why new connections are closed at once ("": they are served)
        self._refused = 0

    # -- life cycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``listen`` (port 0 picks a free port; see :attr:`address`)."""
        if self._server is not None:
            raise UsageError(f"endpoint {self.name} is already listening on {_show(self.address)}")
        host, port = self.listen
        self._stopping = False
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError as exc:
            raise DumontError(
                f"endpoint {self.name} cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="another program may hold that port; stop it or change endpoint_listen",
            ) from exc
        log.info("endpoint %s listening on %s", self.name, _show(self.address))

    async def stop(self) -> None:
        """Stop listening and close every connection, relayed or parked; returns once their sockets are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            if pending:
                log.error("endpoint %s: %d connection task(s) ignored cancellation", self.name, len(pending))
        await _wait_closed([w for c in connections for w in (c.client, c.upstream) if w is not None])
        await server.wait_closed()
        log.info("endpoint %s stopped", self.name)

    async def __aenter__(self) -> EndpointRelay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def address(self) -> Address:
        """The (host, port) the relay is bound to."""
        if self._server is None or not self._server.sockets:
            raise UsageError(f"endpoint {self.name} is not listening", hint="call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    # -- control ----------------------------------------------------------------------------------------------

    def point_to(self, target: Address | None, *, reason: str) -> None:
        """Send new connections to ``target`` from now on (``None``: park them until there is one)."""
        if target is not None and not 0 < target[1] < 65536:
            raise UsageError(f"endpoint {self.name}: target port {target[1]} is out of range", hint="use 1-65535")
        if target == self._target:
            log.debug("endpoint %s already points to %s (%s)", self.name, _show(target), reason)
            return
        previous, self._target = self._target, target
        self._switched_at = time.monotonic()
        self._switch_reason = reason
        self._history.append(Switch(self._switched_at, target, reason))
        self._failing = False
        self._update_gate()
        detail = f"{_show(target)} (was {_show(previous)}): {reason}"
        log.info("endpoint %s now forwards new connections to %s", self.name, detail)
        self._emit("switch", detail)

    def hold(self, *, reason: str = "") -> None:
        """Accept new connections but park them until :meth:`release` (or their ``hold_timeout``)."""
        if self._held:
            return
        self._held = True
        self._update_gate()
        log.info("endpoint %s holds new connections%s", self.name, f": {reason}" if reason else "")
        self._emit("hold", reason)

    def release(self, *, reason: str = "") -> None:
        """End the hold: parked and new connections go to the current target (if there is none, they wait)."""
        if not self._held:
            return
        self._held = False
        parked = sum(c.parked for c in self._connections)
        self._update_gate()
        detail = f"{parked} parked connection(s) go to {_show(self._target)}" + (f": {reason}" if reason else "")
        log.info("endpoint %s released; %s", self.name, detail)
        self._emit("release", detail)

    def refuse(self, *, reason: str) -> None:
        """Close every new connection at once, before a byte, until :meth:`serve_again`; relayed ones go on."""
        if not reason:
            raise UsageError(f"endpoint {self.name}: a refusal needs a reason", hint="say why, for the status")
        if self._refusing:
            self._refusing = reason
            return
        self._refusing = reason
        log.warning("endpoint %s refuses new connections: %s", self.name, reason)
        self._emit("refuse", reason)
        self._notify()

    def serve_again(self, *, reason: str = "") -> None:
        """End a refusal: new connections are served again."""
        if not self._refusing:
            return
        self._refusing = ""
        log.info("endpoint %s serves new connections again%s", self.name, f": {reason}" if reason else "")
        self._emit("serve_again", reason)
        self._notify()

    def close_existing(self, *, reason: str) -> int:
        """Close both sides of every connection that was given a target; return how many were closed."""
        given = [c for c in self._connections if c.target is not None and not c.closed]
        for conn in given:
            conn.abort()
            if conn.task is not None:
                conn.task.cancel()
        if given:
            detail = f"{len(given)} connection(s): {reason}"
            log.info("endpoint %s closed %s", self.name, detail)
            self._emit("close_existing", detail)
            self._notify()
        return len(given)

    # -- observation ------------------------------------------------------------------------------------------

    @property
    def switched_at(self) -> float | None:
        """``time.monotonic()`` of the last switch, or ``None`` if the relay never had a target."""
        return self._switched_at

    @property
    def history(self) -> tuple[Switch, ...]:
        """The last switches, oldest first."""
        return tuple(self._history)

    def stats(self) -> RelayStats:
        """The relay's state and counters now."""
        live = [c for c in self._connections if not c.closed]
        return RelayStats(
            active=sum(c.target is not None for c in live),
            parked=sum(c.parked for c in live),
            accepted=self._accepted,
            failed_connects=self._failed_connects,
            timed_out=self._timed_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            target=self._target,
            held=self._held,
            switched_at=self._switched_at,
            switch_reason=self._switch_reason,
            refused=self._refused,
            refusing=self._refusing,
        )

    async def wait_for_state(self, predicate: Callable[[RelayStats], bool], *, timeout: float) -> RelayStats:
        """Wait until ``predicate(stats())`` holds, at most ``timeout`` seconds; byte counts alone do not wake it.

        :raises TimeoutError: the predicate did not hold in time.
        """
        async with asyncio.timeout(timeout):
            while not predicate(stats := self.stats()):
                await self._changed.wait()
        return stats

    # -- connections ------------------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback (not a coroutine) so that the task is ours: tracked, cancelled and awaited by stop().
        if self._stopping:
            writer.transport.abort()
            return
        if self._refusing:
            self._refused += 1
            writer.close()
            self._notify()
            return
        self._accepted += 1
        conn = _Connection(self._accepted, reader, writer)
        conn.task = asyncio.get_running_loop().create_task(
            self._serve(conn), name=f"endpoint {self.name} connection {conn.number}"
        )
        conn.task.add_done_callback(lambda task: self._forget(conn, task))
        self._connections.add(conn)
        self._notify()

    def _forget(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        # Runs however the task ended, even if it was cancelled before its first step: no socket outlives it.
        conn.abort()
        self._connections.discard(conn)
        self._notify()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("endpoint %s: connection %d failed unexpectedly", self.name, conn.number, exc_info=exc)

    async def _serve(self, conn: _Connection) -> None:
        target = await self._wait_for_target(conn)
        if target is not None and await self._connect(conn, target):
            await self._relay(conn)
        await self._finish(conn)

    async def _wait_for_target(self, conn: _Connection) -> Address | None:
        if self._open.is_set():
            return self._target
        conn.parked = True
        self._notify()
        log.debug("endpoint %s: connection %d parked", self.name, conn.number)
        try:
            async with asyncio.timeout(self.hold_timeout):
                # The gate may close again between being opened and this task running; look again.
                while not self._open.is_set():
                    await self._open.wait()
        except TimeoutError:
            self._timed_out += 1
            log.debug(
                "endpoint %s: connection %d parked longer than %g s; closed", self.name, conn.number, self.hold_timeout
            )
            return None
        finally:
            conn.parked = False
            self._notify()
        return self._target

    async def _connect(self, conn: _Connection, target: Address) -> bool:
        conn.target = target
        self._notify()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*target)
        except (OSError, TimeoutError) as exc:
            self._failed_connects += 1
            self._report_connect_failure(target, exc)
            return False
        conn.upstream, conn.upstream_reader = writer, reader
        if self._failing:
            self._failing = False
            log.info("endpoint %s reaches %s again", self.name, _show(target))
            self._emit("connect_recovered", _show(target))
        log.debug("endpoint %s: connection %d relayed to %s", self.name, conn.number, _show(target))
        return True

    def _report_connect_failure(self, target: Address, exc: BaseException) -> None:
        what = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
        detail = f"{_show(target)}: {what}"
        if self._failing:
            log.debug("endpoint %s cannot reach %s", self.name, detail)
            return
        self._failing = True
        log.warning(
            "endpoint %s cannot reach %s; clients are disconnected until it answers or the target changes",
            self.name,
            detail,
        )
        self._emit("connect_failed", detail)

    async def _relay(self, conn: _Connection) -> None:
        assert conn.upstream is not None and conn.upstream_reader is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(conn.reader, conn.upstream, inbound=True))
                group.create_task(self._pipe(conn.upstream_reader, conn.client, inbound=False))
        except* OSError as errors:
            # A reset or broken pipe on either side ends the whole connection; _finish closes the other side.
            log.debug("endpoint %s: connection %d ended: %s", self.name, conn.number, errors.exceptions[0])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, inbound: bool) -> None:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            if inbound:
                self._bytes_in += len(chunk)
            else:
                self._bytes_out += len(chunk)
            await writer.drain()
        # Pass the end of stream on but keep reading the other way: `ssh host cmd <file` sends EOF first and
        # still expects the command's output.
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()

    async def _finish(self, conn: _Connection) -> None:
        writers = [w for w in (conn.client, conn.upstream) if w is not None]
        for writer in writers:
            writer.close()
        try:
            async with asyncio.timeout(_LINGER):
                for writer in writers:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            log.debug("endpoint %s: connection %d did not flush within %g s; aborted", self.name, conn.number, _LINGER)
        # _forget aborts whatever is still open.

    # -- state ------------------------------------------------------------------------------------------------

    def _update_gate(self) -> None:
        if self._target is not None and not self._held:
            self._open.set()
        else:
            self._open.clear()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, kind: str, detail: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, detail)
        except Exception:
            # The event log is a report; a failing sink must never stop a failover switch.
            log.exception("endpoint %s: event callback failed for %s", self.name, kind)
