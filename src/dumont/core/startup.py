"""Bringing a controller up from its configuration: keys, store, providers, every pair adopted or resumed.

A pair the store already knows is resumed as it was (state, epoch, hosts, unfinished operation). A new pair is
adopted from the config: its primary instance is looked up through its provider, which is also asked to let the
controller's key in (Vast applies account keys only to instances created after them), and its standby too if one
is named (otherwise the loop creates one). The endpoint and the API come up at once; every host is then reached
in the background: its host key pinned, readied (Python, rsync), certified by the pair's host CA so the
endpoint's identity never changes. An adopted pair's endpoint holds new connections until its primary presents
its certificate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator

from dumont.config import Config, PairConfig
from dumont.core.context import ControllerContext, host_ref
from dumont.core.endpoint import listen_address, publish_endpoint
from dumont.core.hosts import SshHosts
from dumont.core.layout import ControllerLayout
from dumont.core.model import HostRef, OperationStatus, PairState
from dumont.core.pair import PairRuntime
from dumont.endpoint.client import EndpointClient
from dumont.endpoint.local import LocalEndpoint
from dumont.endpoint.ports import Endpoint
from dumont.errors import ConfigError, DumontError
from dumont.providers.base import GpuMarket, StandbyCloud
from dumont.providers.registry import open_cloud, open_market
from dumont.store import open_store
from dumont.transport.keys import KnownHosts, ensure_keypair, write_private
from dumont.transport.ssh import SshTransport

log = logging.getLogger("dumont.controller")


def prepare_state(config: Config) -> ControllerLayout:
    """Create the state directory (0700) and every key the controller needs (0600)."""
    layout = ControllerLayout.of(config)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.shared.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_keypair(layout.controller_key, "dumont-controller")
    for pair in config.pairs:
        ensure_keypair(layout.pair_key(pair.name), f"dumont-pair-{pair.name}")
        ensure_keypair(layout.pair_host_ca(pair.name), f"dumont-pair-{pair.name}-host-ca")
    return layout


def controller_name(layout: ControllerLayout) -> str:
    """This controller's name in a fleet: made once per state dir (``host-xxxxxx``), so a restarted controller is
    the same one and takes its own leases back at once (the state dir's lock says no other process has them)."""
    if not layout.controller_id.exists():
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "controller"
        write_private(layout.controller_id, f"{host}-{secrets.token_hex(3)}\n")
    return layout.controller_id.read_text().strip()


def api_token(config: Config, layout: ControllerLayout) -> str:
    """The API token: from ``controller.api_token_file``, else one generated into the state dir (0600)."""
    path = config.controller.api_token_file or layout.api_token
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


@contextlib.asynccontextmanager
async def controller_context(config: Config) -> AsyncIterator[ControllerContext]:
    """Everything the controller shares, opened and closed together."""
    if not config.pairs:
        raise ConfigError("the configuration protects no pair", hint="add a [[pairs]] table")
    layout = prepare_state(config)
    known = KnownHosts(layout.known_hosts)
    transport = SshTransport(identity=layout.controller_key, known_hosts=known,
                             connect_timeout=max(1.0, config.health.probe_timeout_seconds))
    hosts = SshHosts(transport, known, layout, bootstrap_timeout=config.controller.bootstrap_timeout_seconds,
                     clock=time.time, fresh_login_every=config.health.fresh_login_every)
    markets: dict[str, GpuMarket] = {}
    clouds: dict[str, StandbyCloud] = {}
    store = open_store(config.store, layout.database, lease_seconds=config.controller.lease_seconds)
    try:
        for name in dict.fromkeys([*config.gpu_markets, *(p.primary.provider for p in config.pairs)]):
            markets[name] = await open_market(config, name)
        for name in dict.fromkeys(p.standby.provider for p in config.pairs):
            clouds[name] = await open_cloud(config, name)
        yield ControllerContext(config, layout, store, hosts, markets, clouds,
                                controller_id=controller_name(layout))
    finally:
        await hosts.close()
        await transport.close()
        for market in markets.values():
            await market.close()
        for cloud in clouds.values():
            await cloud.close()
        store.close()


async def load_pair(ctx: ControllerContext, pair: PairConfig) -> PairRuntime:
    """Resume a known pair from the store, or adopt a new one from the config."""
    endpoint = make_endpoint(ctx, pair)
    row = ctx.store.get_pair(pair.name)
    if row is not None:
        rt = PairRuntime.from_row(pair, row, endpoint)
        _resume_operation(ctx, rt)
        ctx.event(pair.name, "resumed", f"resumed as {rt.state} at epoch {rt.epoch} after a controller restart")
    else:
        rt = await _adopt(ctx, pair, endpoint)
    return rt


def make_endpoint(ctx: ControllerContext, pair: PairConfig) -> Endpoint:
    """The pair's endpoint as ``controller.endpoint`` says: in its own process (started or not), or in this one."""
    cfg = ctx.config.controller
    if cfg.endpoint == "in-process":
        return LocalEndpoint(pair.name)
    # The endpoint process releases a hold of a controller it no longer hears from (a crash mid-failback).
    silence = 3 * ctx.config.health_check_interval + 2 * ctx.config.health.probe_timeout_seconds + 10
    # A fleet's controllers each run an endpoint process of their own (docs/fleet.md), in their own state dir.
    root = cfg.endpoint_dir or (ctx.layout.own_endpoint_dir if cfg.endpoint_hosts else ctx.layout.endpoint_dir)
    return EndpointClient(root, pair.name, start_daemon=cfg.endpoint == "process", expect_within=silence,
                          controller_pid=os.getpid(), fall_through=bool(cfg.endpoint_hosts))


async def reach_hosts(ctx: ControllerContext, rt: PairRuntime) -> None:
    """Reach, ready and re-key every host of a pair (in the background at start-up); failures are left to probes."""
    try:
        for ref in (rt.primary, rt.standby):
            if ref is not None:
                await _reach(ctx, rt, ref)
    finally:
        if rt.awaiting_host_key:
            rt.awaiting_host_key = False
            await rt.endpoint.release(reason="the adopted primary was reached")


async def _adopt(ctx: ControllerContext, pair: PairConfig, endpoint: Endpoint) -> PairRuntime:
    if pair.primary.provider not in ctx.markets or not pair.primary.instance_id:
        raise ConfigError(f"pairs.{pair.name}.primary must name the instance_id of a GPU on a market "
                          f"(provider {pair.primary.provider!r} is not one)")
    market = ctx.market(pair.primary.provider)
    keys = [ctx.controller_public_key(), *ctx.user_public_keys()]
    # Vast copies account keys only into instances created after them: the GPU a user already rents does not
    # know the controller's key until it is attached through the API (research/real-instances.md B1).
    await market.attach_keys(pair.primary.instance_id, keys)
    primary = host_ref(await market.get(pair.primary.instance_id), "gpu")
    ctx.store.record_host(primary.provider, primary.instance_id, pair.name, "gpu", "adopted as the primary")
    standby = None
    if pair.standby.instance_id:
        cloud = ctx.standby_cloud_of(pair)
        await cloud.set_ssh_keys(pair.standby.instance_id, ctx.config.standby.ssh_user, keys)
        standby = host_ref(await cloud.get(pair.standby.instance_id), "cpu")
        ctx.store.record_host(standby.provider, standby.instance_id, pair.name, "cpu", "adopted as the standby")
    rt = PairRuntime(pair, PairState.STARTING, 1, primary, standby, endpoint, awaiting_host_key=True)
    ctx.store.save_pair(rt.row())
    ctx.event(pair.name, "adopted", f"protecting GPU {primary.instance_id}"
              + (f" with standby {standby.instance_id}" if standby else "; a standby will be created"))
    return rt


def _resume_operation(ctx: ControllerContext, rt: PairRuntime) -> None:
    row = ctx.store.open_operation(rt.name)
    if row is not None:
        rt.operation = OperationStatus(row.kind, row.step, row.started_at)
        rt.operation_id = row.id


async def _reach(ctx: ControllerContext, rt: PairRuntime, ref: HostRef) -> None:
    """Pin the host's key (first contact) and certify it for the endpoint; a failure is left to probes."""
    try:
        await ctx.hosts.reach(ref, deadline=ctx.clock() + min(60.0, ctx.config.ssh_wait_timeout))
        await ctx.ensure_ready(ref)
        await ctx.hosts.certify_host(ref, rt.name)
    except DumontError as exc:
        ctx.event(rt.name, "host_unreachable", f"could not reach {ref.alias} at start-up: {exc}")


async def start_endpoint(ctx: ControllerContext, rt: PairRuntime) -> None:
    """Serve the pair's stable SSH endpoint and write the user's ssh_config snippet.

    An endpoint process that outlived a previous controller already serves the pair: this only confirms its route.
    """
    # Connections arriving during a failback's catch-up pass wait for it (bounded by the transfer timeout).
    await rt.endpoint.start(listen_address(ctx, rt.config), ctx.config.replication.transfer_timeout_seconds)
    if rt.primary is not None:
        await rt.endpoint.point_to((rt.primary.ssh_host, rt.primary.ssh_port), reason=f"serving {rt.primary.alias}",
                                   epoch=rt.epoch)
    if rt.awaiting_host_key:
        await rt.endpoint.hold(reason="the adopted primary does not present its host certificate yet")
    publish_endpoint(ctx, rt)
