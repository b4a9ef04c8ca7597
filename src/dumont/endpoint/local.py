"""A pair's endpoint as a relay inside the calling process: the :class:`~dumont.endpoint.ports.Endpoint` for tests.

It keeps the endpoint process's rules (a route older than the epoch served is refused) so that a controller
tested against it behaves the same against :class:`~dumont.endpoint.client.EndpointClient`; unlike the endpoint
process, it stops with its caller.
"""

from __future__ import annotations

from dumont.endpoint.relay import Address, EndpointRelay, EventCallback, RelayStats, Switch
from dumont.endpoint.routes import check_epoch
from dumont.errors import UsageError


class LocalEndpoint:
    """An :class:`EndpointRelay` behind the :class:`~dumont.endpoint.ports.Endpoint` coroutines."""

    def __init__(self, pair: str, *, connect_timeout: float = 5.0, on_event: EventCallback | None = None) -> None:
        self._pair = pair
        self.connect_timeout = connect_timeout
        self.on_event = on_event
        self._relay: EndpointRelay | None = None
        self._epoch = 0

    @property
    def pair(self) -> str:
        """The pair this endpoint serves."""
        return self._pair

    @property
    def relay(self) -> EndpointRelay:
        """The relay itself (tests wait on it with ``wait_for_state``)."""
        if self._relay is None:
            raise UsageError(f"endpoint {self._pair} is not started", hint="await start() first")
        return self._relay

    @property
    def epoch(self) -> int:
        """The epoch of the last route."""
        return self._epoch

    async def start(self, listen: Address, hold_timeout: float) -> Address:
        """Listen on ``listen``; a second call with the same address only updates ``hold_timeout``."""
        relay = self._relay
        if relay is not None and relay.listen == listen:
            relay.hold_timeout = hold_timeout
            return relay.address
        new = EndpointRelay(self._pair, listen, connect_timeout=self.connect_timeout, hold_timeout=hold_timeout,
                            on_event=self.on_event)
        await new.start()
        if relay is not None:
            target = relay.stats().target
            if target is not None:
                new.point_to(target, reason=f"moved to {listen[0]}:{listen[1]}")
            await relay.stop()
        self._relay = new
        return new.address

    async def point_to(self, target: Address | None, *, reason: str, epoch: int) -> None:
        """Send new connections to ``target``; raise StaleRouteRefused when ``epoch`` is older than the last one."""
        check_epoch(self._pair, served=self._epoch, published=epoch)
        self.relay.point_to(target, reason=reason)
        self._epoch = epoch

    async def hold(self, *, reason: str = "") -> None:
        """Park new connections until :meth:`release`."""
        self.relay.hold(reason=reason)

    async def release(self, *, reason: str = "") -> None:
        """End the hold."""
        self.relay.release(reason=reason)

    async def close_existing(self, *, reason: str) -> int:
        """Close every connection given a target; return how many."""
        return self.relay.close_existing(reason=reason)

    async def refresh(self) -> None:
        """Nothing to fetch: the relay is here."""

    async def stop(self) -> None:
        """Stop the relay and forget the route."""
        relay, self._relay = self._relay, None
        self._epoch = 0
        if relay is not None:
            await relay.stop()

    async def detach(self) -> None:
        """Stop the relay: it lives in this process, so it cannot outlive it."""
        await self.stop()

    @property
    def address(self) -> Address:
        """The bound (host, port)."""
        return self.relay.address

    @property
    def history(self) -> tuple[Switch, ...]:
        """The relay's last switches."""
        return self.relay.history if self._relay is not None else ()

    @property
    def switched_at(self) -> float | None:
        """When the relay last switched."""
        return self._relay.switched_at if self._relay is not None else None

    def stats(self) -> RelayStats:
        """The relay's state and counters now."""
        return self.relay.stats()
