"""What the controller uses of a pair's stable endpoint, whichever process runs it.

:class:`Endpoint` is met by :class:`~dumont.endpoint.client.EndpointClient` (the endpoint process, which outlives
the controller) and :class:`~dumont.endpoint.local.LocalEndpoint` (a relay inside the controller, for tests and
single-process use). Changes are coroutines because one may be a round trip; what the controller reads every tick
(``address``, ``stats()``, ``history``, ``switched_at``) is synchronous and comes from the last :meth:`refresh`.

Error contract: every coroutine finishes within its deadline (a few seconds) or raises
:class:`~dumont.errors.EndpointUnavailable` (RETRY) naming the pair and where the endpoint was sought;
``point_to`` with an epoch older than the one served raises :class:`~dumont.errors.StaleRouteRefused`; other
refusals raise :class:`~dumont.errors.DumontError` subclasses saying what to fix. The synchronous readers raise
:class:`~dumont.errors.UsageError` before ``start``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dumont.endpoint.relay import Address, RelayStats, Switch


class Endpoint(Protocol):
    """A pair's stable SSH endpoint: where users connect, forwarded to the pair's primary."""

    @property
    def pair(self) -> str:
        """The pair this endpoint serves."""
        ...

    async def start(self, listen: Address, hold_timeout: float) -> Address:
        """Serve the pair on ``listen`` (port 0 picks one); idempotent; return the bound address."""
        ...

    async def point_to(self, target: Address | None, *, reason: str, epoch: int) -> None:
        """Send new connections to ``target``, the primary at ``epoch`` (``None``: park them until there is one)."""
        ...

    async def hold(self, *, reason: str = "") -> None:
        """Park new connections until :meth:`release` (or their hold timeout)."""
        ...

    async def release(self, *, reason: str = "") -> None:
        """End the hold: parked and new connections go to the current target."""
        ...

    async def close_existing(self, *, reason: str) -> int:
        """Close every connection given a target; return how many were closed."""
        ...

    async def refresh(self) -> None:
        """Fetch the state the synchronous readers report (call it every tick)."""
        ...

    async def stop(self) -> None:
        """Stop serving the pair and forget its route (the pair is removed); open sessions are closed."""
        ...

    async def detach(self) -> None:
        """The controller is done with this endpoint (it is exiting): an endpoint process keeps serving."""
        ...

    @property
    def address(self) -> Address:
        """The (host, port) users connect to."""
        ...

    @property
    def history(self) -> tuple[Switch, ...]:
        """The last switches, oldest first (``at`` is ``time.monotonic()``)."""
        ...

    @property
    def switched_at(self) -> float | None:
        """``time.monotonic()`` of the last switch, or None if there never was a target."""
        ...

    def stats(self) -> RelayStats:
        """The endpoint's state and counters, as of the last refresh."""
        ...



if TYPE_CHECKING:  # mypy checks here that both implementations meet the protocol
    from dumont.endpoint.client import EndpointClient
    from dumont.endpoint.local import LocalEndpoint

    _IMPLEMENTATIONS: tuple[type[Endpoint], ...] = (EndpointClient, LocalEndpoint)
