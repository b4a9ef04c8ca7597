"""A pair's published route (where its endpoint listens and which primary it forwards to), and ``routes.json``.

The file is the endpoint process's memory across its own restarts: it is rewritten whole and atomically (write,
fsync, rename) on every change, so a process started after a crash serves the last published primary at once.
Holds are not written: a hold belongs to a controller that is running, and a restarted endpoint serves.
A route marked ``fall_through`` (a fleet whose controllers each run an endpoint) is refused while no controller is
heard instead: another controller's endpoint serves the route the store holds, this one may be stale.

Epochs order routes: a route whose epoch is lower than the one served comes from a controller that missed a
failover (an old process still running during an upgrade) and is refused with :class:`StaleRouteRefused`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dumont.errors import EndpointError, StaleRouteRefused, UsageError
from dumont.transport.keys import write_private

Address = tuple[str, int]

ROUTES_VERSION = 1
_PAIR_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class Route:
    """One pair's endpoint: the address asked for, the one bound, and where new connections go."""

    pair: str
    listen: str  # as published ("host:port"; port 0 picks one)
    hold_timeout: float
    address: Address | None = None  # bound; a restart binds it again so that users keep the same port
    target: Address | None = None
    epoch: int = 0
    reason: str = ""
    fall_through: bool = False  # refused while no controller is heard: users' ssh goes to the next endpoint

    def bind_address(self) -> Address:
        """Where to listen: the published address, or the one bound before when the published port is 0."""
        host, port = parse_listen(self.listen)
        if port == 0 and self.address is not None:
            return self.address
        return host, port

    def routed(self, target: Address | None, *, epoch: int, reason: str) -> Route:
        """This route sent to ``target`` at ``epoch``; raise StaleRouteRefused when ``epoch`` is older than ours."""
        check_epoch(self.pair, served=self.epoch, published=epoch)
        return replace(self, target=target, epoch=epoch, reason=reason)


def check_epoch(pair: str, *, served: int, published: int) -> None:
    """Refuse a route published at an epoch older than the one served."""
    if published < served:
        raise StaleRouteRefused(
            f"endpoint {pair}: a route for epoch {published} was refused; it serves epoch {served}",
            hint="the sender missed a failover; stop it and let the current controller publish",
        )


def check_pair_name(pair: object) -> str:
    """Return ``pair`` if it is a pair name (as the config allows them); raise UsageError otherwise."""
    if not isinstance(pair, str) or _PAIR_NAME.fullmatch(pair) is None:
        raise UsageError(f"{pair!r} is not a pair name", hint="1 to 40 lowercase letters, digits and dashes")
    return pair


def parse_listen(listen: str) -> Address:
    """Split ``host:port`` (``[::1]:22`` for IPv6; port 0 picks a free one); raise UsageError if it is not one."""
    host, colon, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host.strip() or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"not a host:port address to listen on: {listen!r}", hint='use "127.0.0.1:2222"')
    return host, int(port_text)


def format_listen(address: Address) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def save_routes(path: Path, routes: list[Route]) -> None:
    """Replace ``path`` with every route, atomically (0600)."""
    document = {"version": ROUTES_VERSION, "pairs": {r.pair: _to_json(r) for r in sorted(routes, key=_by_pair)}}
    write_private(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_routes(path: Path) -> list[Route]:
    """The routes saved in ``path`` (none when it does not exist); raise EndpointError when it cannot be read."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise _unreadable(path, str(exc)) from exc
    if not isinstance(document, dict) or document.get("version") != ROUTES_VERSION:
        raise _unreadable(path, f"expected a version {ROUTES_VERSION} routes document")
    pairs = document.get("pairs")
    if not isinstance(pairs, dict):
        raise _unreadable(path, '"pairs" is not an object')
    try:
        return [_from_json(name, entry) for name, entry in pairs.items()]
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise _unreadable(path, f"a route is malformed: {exc}") from exc


def _by_pair(route: Route) -> str:
    return route.pair


def _to_json(route: Route) -> dict[str, Any]:
    data = asdict(route)
    del data["pair"]
    for key in ("address", "target"):
        data[key] = list(data[key]) if data[key] is not None else None
    return data


def _from_json(name: str, entry: dict[str, Any]) -> Route:
    address, target = entry.get("address"), entry.get("target")
    route = Route(
        pair=check_pair_name(name),
        listen=str(entry["listen"]),
        hold_timeout=float(entry["hold_timeout"]),
        address=(str(address[0]), int(address[1])) if address is not None else None,
        target=(str(target[0]), int(target[1])) if target is not None else None,
        epoch=int(entry["epoch"]),
        reason=str(entry.get("reason", "")),
        fall_through=bool(entry.get("fall_through", False)),
    )
    parse_listen(route.listen)
    return route


def _unreadable(path: Path, why: str) -> EndpointError:
    return EndpointError(
        f"the endpoint's routes file {path} cannot be read: {why}",
        hint="move it aside and start again; the controller publishes every route when it next starts",
    )
