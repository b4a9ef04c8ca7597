"""Running the controller as a service (the composition root): everything up in order, down on SIGINT/SIGTERM.

It lives outside ``core`` because it wires ``core`` to the API and telemetry, which both read ``core``: the
packages then import in one direction only (``service`` -> ``api``, ``telemetry`` -> ``core``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Callable

from dumont.api.server import ApiServer, Extension
from dumont.config import Config, PairConfig, split_host_port
from dumont.core.context import ControllerContext
from dumont.core.controller import Controller, say_taken, watch_the_loop
from dumont.core.leases import Leases
from dumont.core.lock import hold_state
from dumont.core.pair import PairRuntime, cancel, start_background
from dumont.core.startup import (
    api_token,
    controller_context,
    load_pair,
    reach_hosts,
    start_endpoint,
)
from dumont.errors import DumontError
from dumont.setup.doctor import run_doctor
from dumont.telemetry import Telemetry
from dumont.transport.keys import write_private

log = logging.getLogger("dumont.controller")


async def serve(config: Config, *, on_ready: Callable[[ApiServer], None] | None = None,
                extensions: tuple[Extension, ...] = ()) -> None:
    """Protect every configured pair until SIGINT or SIGTERM (or until the returned controller is stopped).

    :raises ControllerAlreadyRunning: another controller holds this state directory (its pid and host are named).
    """
    with hold_state(config.state_dir, api=config.controller.api_listen):
        await _serve(config, on_ready=on_ready, extensions=extensions)


async def _serve(config: Config, *, on_ready: Callable[[ApiServer], None] | None,
                 extensions: tuple[Extension, ...]) -> None:
    async with controller_context(config) as ctx:
        await refuse_unready_setup(ctx)
        # Every controller of a fleet reads the same pairs; it acts on those whose lease it holds (on its own
        # store, a lone controller takes them all at once: nobody else holds them).
        leases = Leases(ctx.store, ctx.controller_id, config.controller.lease_seconds,
                        tick=config.health_check_interval)
        try:
            taken = leases.round([pair.name for pair in config.pairs]).taken
            ctx.acting = leases.held
            for name in taken:
                say_taken(ctx, name, ctx.clock())
            # Adopting many pairs can outlast half a lease: what was taken is renewed while they load.
            renewing = asyncio.create_task(_renew(leases, taken), name="leases while loading")
            try:
                pairs = [await load_pair(ctx, pair) for pair in config.pairs if pair.name in taken]
            finally:
                await cancel(renewing)
            controller = Controller(ctx, pairs, leases=leases, open_pair=functools.partial(open_pair, ctx))
            controller.keep_leases()
            await _run(ctx, controller, on_ready=on_ready, extensions=extensions)
        finally:
            leases.release_all()  # a start-up that failed part-way leaves no lease to wait for


async def _renew(leases: Leases, pairs: tuple[str, ...]) -> None:
    while True:
        await asyncio.sleep(leases.every)  # the renewal period, as the controller's own loop keeps it
        leases.round(pairs)


async def open_pair(ctx: ControllerContext, pair: PairConfig) -> PairRuntime:
    """Bring up a pair whose lease this controller has just taken: resumed from the store (or adopted), its
    endpoint attached (an endpoint process that served it for the previous owner goes on serving), its hosts
    reached in the background."""
    rt = await load_pair(ctx, pair)
    await start_endpoint(ctx, rt)
    rt.reach_task = start_background(ctx, rt, "reach", functools.partial(reach_hosts, ctx, rt))
    return rt


async def _run(ctx: ControllerContext, controller: Controller, *, on_ready: Callable[[ApiServer], None] | None,
               extensions: tuple[Extension, ...]) -> None:
    config, pairs = ctx.config, list(controller.pairs.values())
    host, port = split_host_port(config.controller.api_listen)
    telemetry = Telemetry(controller)
    api = ApiServer(controller, api_token(config, ctx.layout), host, port, (*telemetry.extensions, *extensions))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, controller.stop)
    try:
        for rt in pairs:
            await start_endpoint(ctx, rt)
        await api.start()
        # Hosts are reached after the API answers: an unreachable host must not keep `dumont status` waiting.
        for rt in pairs:
            rt.reach_task = start_background(ctx, rt, "reach", functools.partial(reach_hosts, ctx, rt))
            if rt.operation is not None and not rt.operation.finished:
                controller.resume_operation(rt)
        write_private(ctx.layout.ready, json.dumps({"pid": os.getpid(), "api_url": api.url}) + "\n")
        others = len(config.pairs) - len(pairs)
        ctx.event(None, "controller_started", f"controller {ctx.controller_id} protecting {len(pairs)} pair(s)"
                  + (f" ({others} held by other controllers)" if others else "") + f"; API at {api.url}")
        if on_ready is not None:
            on_ready(api)
        interval = config.health_check_interval
        watchdog = asyncio.create_task(watch_the_loop(
            controller, every=interval, stalled_after=3 * interval + 2 * config.health.probe_timeout_seconds + 30))
        try:
            async with telemetry:
                await controller.run()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        ctx.layout.ready.unlink(missing_ok=True)
        for rt in controller.pairs.values():
            await cancel(rt.reach_task)
        await api.stop()
        for rt in controller.pairs.values():
            await rt.endpoint.detach()  # an endpoint process keeps serving the users meanwhile
        ctx.event(None, "controller_stopped", "the controller stopped; a restart resumes every pair")


async def refuse_unready_setup(ctx: ControllerContext) -> None:
    """Before a new pair is adopted (and anything is created for it), every doctor check must pass."""
    if all(ctx.store.get_pair(pair.name) is not None for pair in ctx.config.pairs):
        return  # resuming: a host that is down now is the loop's business, not a reason to refuse
    failed = [c for c in await run_doctor(ctx.config) if c.status == "fail"]
    if failed:
        raise DumontError("the setup is not ready, so nothing was created: "
                          + "; ".join(f"{c.name}: {c.detail} ({c.fix})" for c in failed),
                          hint="run `dumont doctor --config FILE` for the full report")
