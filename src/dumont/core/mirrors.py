"""A fleet's endpoints of the pairs other controllers own: served here too, routed to the primary in the store.

With ``controller.endpoint_hosts``, each controller's endpoint process serves every pair of the fleet, so losing
one controller machine loses no user's address. The pairs this controller holds are routed by its own decisions
(holds, switches); the others follow the store's pair rows, read once a tick: their primary at their epoch. A
route that moves to a newer epoch closes the sessions relayed to the old primary, as the owner's switch closes
its own: a session left on a fenced primary writes where nothing replicates.

Users reach a mirror only when the owner's endpoint does not serve them: the owner's snippet names its own
endpoint first (``core/endpoint.py``), and an endpoint whose controller falls silent refuses new connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from dumont.config import PairConfig
from dumont.core.context import ControllerContext
from dumont.core.endpoint import listen_address
from dumont.endpoint.ports import Endpoint
from dumont.endpoint.relay import Address
from dumont.errors import DumontError
from dumont.store.rows import PairRow

log = logging.getLogger("dumont.controller")


class Mirrors:
    """This controller's endpoints of the pairs it does not hold."""

    def __init__(self, ctx: ControllerContext, make: Callable[[PairConfig], Endpoint]) -> None:
        self.ctx = ctx
        self._make = make
        self.endpoints: dict[str, Endpoint] = {}
        self.routes: dict[str, tuple[Address, int]] = {}  # what each mirror was last pointed to: target, epoch

    async def follow(self, held: Collection[str]) -> None:
        """One round: every configured pair not in ``held`` served here, routed to its primary in the store."""
        for name in [name for name in self.endpoints if name in held]:
            del self.endpoints[name]  # its runtime routes it now, through the same endpoint process
            self.routes.pop(name, None)
        others = [pair for pair in self.ctx.config.pairs if pair.name not in held]
        if not others:
            return
        try:
            rows = {row.name: row for row in self.ctx.store.pairs()}
        except DumontError as exc:
            log.debug("the store does not answer (%s): the mirrored endpoints keep their routes", exc)
            await self._heartbeat()
            return
        for pair in others:
            try:
                await self._follow(pair, rows.get(pair.name))
            except DumontError as exc:
                log.warning("%s: this controller's endpoint of the pair could not follow the store: %s", pair.name,
                            exc)

    async def _follow(self, pair: PairConfig, row: PairRow | None) -> None:
        endpoint = self.endpoints.get(pair.name)
        if endpoint is None:
            endpoint = self._make(pair)
            await endpoint.start(listen_address(self.ctx, pair), self.ctx.config.replication.transfer_timeout_seconds)
            self.endpoints[pair.name] = endpoint
        primary = row.primary if row is not None else None
        if row is None or primary is None:
            await endpoint.refresh()  # nothing to route to yet: it keeps what it has
            return
        route = ((str(primary["ssh_host"]), int(primary["ssh_port"])), row.epoch)
        before = self.routes.get(pair.name)
        if route == before:
            await endpoint.refresh()
            return
        await endpoint.point_to(route[0], reason=f"the store's primary at epoch {row.epoch} (held by another "
                                                 "controller)", epoch=row.epoch)
        self.routes[pair.name] = route
        if before is not None and before[0] != route[0]:
            closed = await endpoint.close_existing(reason=f"the pair moved to epoch {row.epoch} on another "
                                                          "controller")
            if closed:
                log.info("%s: closed %d session(s) this controller's endpoint relayed to the former primary",
                         pair.name, closed)

    async def _heartbeat(self) -> None:
        """Tell the endpoint process this controller runs (one request is a heartbeat for all its pairs)."""
        endpoint = next(iter(self.endpoints.values()), None)
        if endpoint is not None:
            try:
                await endpoint.refresh()
            except DumontError as exc:
                log.debug("the endpoint process of the mirrored pairs does not answer: %s", exc)
