"""The telemetry routes of the controller's API: ``/metrics``, ``/api/telemetry`` and the dashboard at ``/``.

``/metrics`` needs the API token like every other route (Prometheus sends it as a bearer token:
``authorization: {credentials_file: <state_dir>/api_token}`` in the scrape config). The dashboard page itself is
public: it holds no data, and fetches everything with the token it is given.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dumont.api.server import Extension, json_response
from dumont.core.model import Health
from dumont.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from dumont.core.pair import PairRuntime
    from dumont.telemetry.wiring import Telemetry


@cache
def dashboard_page() -> bytes:
    """The dashboard: one HTML file with its CSS and JavaScript inline."""
    return resources.files("dumont.telemetry").joinpath("dashboard.html").read_bytes()


def routes(telemetry: Telemetry) -> Extension:
    """An ApiServer extension adding the telemetry routes."""

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(body=dashboard_page(), headers={"Content-Type": "text/html; charset=utf-8",
                                                             "Cache-Control": "no-store"})

    dashboard.public = True  # type: ignore[attr-defined]  # read by ApiServer's auth middleware

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=telemetry.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def observed(request: web.Request) -> web.Response:
        return json_response(telemetry_status(telemetry))

    def extend(app: web.Application) -> None:
        app.router.add_get("/", dashboard)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/api/telemetry", observed)

    return extend


def telemetry_status(telemetry: Telemetry) -> dict[str, Any]:
    """What the dashboard shows beyond ``/api/status``: cost, price, disk, alerts and the last probes."""
    ctx = telemetry.controller.ctx
    now = ctx.clock()
    return {"pairs": {rt.name: _pair(telemetry, rt, now) for rt in telemetry.controller.pairs.values()},
            "gpu_max_price_per_hour": ctx.config.gpu_max_price,
            "notifications": telemetry.notifier is not None}


def _pair(telemetry: Telemetry, rt: PairRuntime, now: float) -> dict[str, Any]:
    samples = telemetry.sampler.pair(rt.name)
    costs = samples.cost_dollars(now)
    probes: dict[str, list[dict[str, Any]]] = {}
    observation = rt.observation
    for role, health in (("primary", observation.primary if observation else None),
                         ("standby", observation.standby if observation else None)):
        if health is not None:
            probes[role] = [{"name": p.name, "ok": None if p.health == Health.UNKNOWN else p.health == Health.OK,
                             "detail": p.detail, "seconds": round(p.seconds, 4)} for p in health.probes]
    return {
        "cost_dollars": round(sum(costs.values()), 6),
        "cost_by_machine": {machine: round(dollars, 6) for machine, dollars in costs.items()},
        "gpu_price_per_hour": samples.gpu_price.price if samples.gpu_price else None,
        "disk_used_ratio": round(samples.disk.used_ratio, 4) if samples.disk else None,
        "disk_free_bytes": samples.disk.free_bytes if samples.disk else None,
        "alerts": sorted(rt.memory.alerted | samples.alerts),
        "probes": probes,
        "failures": {"primary": rt.memory.primary_failures, "standby": rt.memory.standby_failures},
    }
