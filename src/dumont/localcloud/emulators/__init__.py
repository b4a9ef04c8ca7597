"""Cloud API emulators served by the local cloud daemon, each on its own 127.0.0.1 port.

An emulator answers a vendor's HTTP API the way the vendor does (paths, bodies, status codes, quirks recorded in
``research/cloud-apis.md``) and backs every instance it creates with a real host of the pool. It reads a host's
state from the pool when asked (a killed host is reported the way the vendor reports a dead machine) and
offers the vendor's own faults (Vast outbid, GCP preemption) through :meth:`Emulator.fault`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from dumont.localcloud.daemon import LocalCloud
    from dumont.localcloud.hosts import LocalHost


class Emulator(Protocol):
    """One vendor API served by the local cloud."""

    name: str  # the provider name its hosts carry ("vast", "gcp"; "registry" has none); its URL is "<name>_url"
    fault_actions: frozenset[str]  # vendor-specific faults it offers, e.g. {"outbid"}

    async def start(self) -> str:
        """Start serving on 127.0.0.1; return the base URL."""
        ...

    async def stop(self) -> None:
        """Stop serving."""
        ...

    async def fault(self, action: str, host: LocalHost) -> dict[str, Any]:
        """Apply one of ``fault_actions`` to a host this emulator created; return the host's new record."""
        ...


def endpoint_of(request: web.Request) -> tuple[str, str]:
    """(method, route) of a request: what Vast rate-limits one at a time, and what the benches count."""
    route = request.match_info.route.resource
    return request.method, route.canonical if route is not None else request.path


def create_emulators(cloud: LocalCloud) -> list[Emulator]:
    """Every emulator the local cloud serves."""
    from dumont.localcloud.emulators import gcp, registry, vast

    return [vast.create(cloud), gcp.create(cloud), registry.create(cloud)]
