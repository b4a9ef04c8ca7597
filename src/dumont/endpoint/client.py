"""The controller's side of the endpoint process: one pair's :class:`~dumont.endpoint.ports.Endpoint`.

Every request carries the controller's pid, so each one is also a heartbeat; :meth:`EndpointClient.refresh`,
called every tick, is the regular one. ``expect_within`` tells the endpoint how long to wait for the next before it
reports "no controller" and releases any hold this controller left.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dumont.endpoint.control import DEFAULT_TIMEOUT, request
from dumont.endpoint.launch import DEFAULT_START_TIMEOUT, ensure_endpoint_daemon
from dumont.endpoint.layout import EndpointLayout
from dumont.endpoint.protocol import Message, address_from_wire, address_to_wire, stats_from_wire, switch_from_wire
from dumont.endpoint.relay import Address, RelayStats, Switch
from dumont.endpoint.routes import format_listen
from dumont.endpoint.watch import DEFAULT_EXPECT_WITHIN
from dumont.errors import UsageError


class EndpointClient:
    """Pair ``pair``'s endpoint, served by the endpoint process of directory ``root``."""

    def __init__(
        self,
        root: Path,
        pair: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        expect_within: float = DEFAULT_EXPECT_WITHIN,
        start_daemon: bool = True,
        controller_pid: int | None = None,
        fall_through: bool = False,
    ) -> None:
        self.layout = EndpointLayout(root)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.expect_within = expect_within
        self.start_daemon = start_daemon  # False under systemd: the endpoint has its own unit
        self.controller_pid = controller_pid if controller_pid is not None else os.getpid()
        self.fall_through = fall_through  # a fleet's endpoint: refused while its controller is silent
        self._pair = pair
        self._address: Address | None = None
        self._status: Message | None = None
        self.daemon_pid: int | None = None
        self.summary = ""  # the endpoint's sentence about the controller, as of the last refresh

    @property
    def pair(self) -> str:
        """The pair this endpoint serves."""
        return self._pair

    # -- changes ----------------------------------------------------------------------------------------------

    async def start(self, listen: Address, hold_timeout: float) -> Address:
        """Start the endpoint process unless it runs (``start_daemon``), serve the pair on ``listen``, refresh."""
        if self.start_daemon:
            self.daemon_pid = await ensure_endpoint_daemon(self.layout.root, timeout=self.start_timeout)
        answer = await self._call("serve", listen=format_listen(listen), hold_timeout=hold_timeout,
                                  fall_through=self.fall_through)
        self._keep(answer)
        await self.refresh()
        return self.address

    async def point_to(self, target: Address | None, *, reason: str, epoch: int) -> None:
        """Route new connections to ``target``, the primary at ``epoch``; saved by the endpoint before it answers."""
        self._keep(await self._call("route", target=address_to_wire(target), reason=reason, epoch=epoch))

    async def hold(self, *, reason: str = "") -> None:
        """Park new connections until :meth:`release` (released by the endpoint if this controller falls silent)."""
        self._keep(await self._call("hold", reason=reason))

    async def release(self, *, reason: str = "") -> None:
        """End the hold."""
        self._keep(await self._call("release", reason=reason))

    async def close_existing(self, *, reason: str) -> int:
        """Close every connection given a target; return how many."""
        answer = await self._call("close_existing", reason=reason)
        self._keep(answer)
        return int(answer["closed"])

    async def heartbeat(self) -> None:
        """Tell the endpoint this controller runs (any request does; this one only that)."""
        await self._call("heartbeat", pair=None)

    async def refresh(self) -> None:
        """Fetch the pair's status (a heartbeat too); the synchronous readers report it until the next refresh."""
        answer = await self._call("status")
        self.summary = str(answer.get("summary", ""))
        self.daemon_pid = int(answer["pid"])
        self._keep({"endpoint": answer["pairs"][self._pair]})

    async def stop(self) -> None:
        """Stop serving the pair and forget its route; the endpoint process keeps serving the other pairs."""
        await self._call("forget")
        self._status, self._address = None, None

    async def detach(self) -> None:
        """Leave the endpoint serving as it is: a controller that exits must not cut its users' sessions."""

    # -- readers (from the last refresh) ----------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The (host, port) users connect to."""
        if self._address is None:
            raise UsageError(f"endpoint {self._pair} is not started", hint="await start() first")
        return self._address

    @property
    def epoch(self) -> int:
        """The epoch of the route the endpoint serves."""
        return int(self._last()["epoch"])

    @property
    def history(self) -> tuple[Switch, ...]:
        """The last switches, oldest first."""
        if self._status is None:
            return ()
        return tuple(switch_from_wire(s) for s in self._status["history"])

    @property
    def switched_at(self) -> float | None:
        """``time.monotonic()`` of the last switch (the same clock in every process of this host)."""
        return self.stats().switched_at if self._status is not None else None

    def stats(self) -> RelayStats:
        """The relay's state and counters as of the last refresh."""
        status = self._last()
        if status["stats"] is None:  # the endpoint could not bind its address (status["error"] says why)
            return RelayStats(0, 0, 0, 0, 0, 0, 0, address_from_wire(status["target"]), False, None, "")
        return stats_from_wire(status["stats"])

    # -- helpers ----------------------------------------------------------------------------------------------

    def _keep(self, answer: Message) -> None:
        """Keep the pair's status that a change's answer carries (the endpoint sends it with each)."""
        self._status = answer["endpoint"]
        self._address = address_from_wire(self._status.get("address")) or self._address

    def _last(self) -> Message:
        if self._status is None:
            raise UsageError(f"endpoint {self._pair} has no status yet", hint="await start() or refresh() first")
        return self._status

    async def _call(self, op: str, **fields: Any) -> Message:
        message: Message = {"op": op, "pair": self._pair, "controller": self.controller_pid,
                            "expect_within": self.expect_within, **fields}
        if message["pair"] is None:
            del message["pair"]
        return await request(self.layout.control_socket, message, timeout=self.timeout,
                             what=f"endpoint {self._pair}")
