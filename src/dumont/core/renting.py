"""Renting a GPU that works (SPEC §4.5 steps 1 and 2): search, rent, wait for running and SSH, or clean up and move on.

Every instance is recorded in the store the moment the provider returns its id, so a controller that dies
mid-wait finds it again (by that record, or by the pair's label) instead of renting a second one. A failure at
any step destroys what was rented before the next offer is tried; backoff between attempts is exponential and
the number of attempts bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dumont.core.bootstrap import boot_script
from dumont.core.context import ControllerContext, host_ref
from dumont.core.model import HostRef, RecoveryStep
from dumont.errors import DumontError, Recovery
from dumont.providers.base import (
    GpuMarket,
    Instance,
    InstanceState,
    LaunchRequest,
    Offer,
    OfferQuery,
    ProviderError,
)

log = logging.getLogger("dumont.controller")

Progress = Callable[[RecoveryStep, dict[str, object]], None]


class RentingFailed(DumontError):
    """No offer could be rented and reached; the pair stays on the CPU."""


def offer_query(ctx: ControllerContext, market: GpuMarket, exclude_machines: frozenset[str]) -> OfferQuery:
    """The configured limits for a new GPU (SPEC §4.1, §4.5), with what this market may be asked for."""
    cfg, policy = ctx.config, market.policy
    return OfferQuery(
        min_gpu_ram_gb=cfg.gpu_min_ram_gb, max_price_per_hour=cfg.gpu_max_price,
        min_reliability=policy.min_reliability, regions=tuple(cfg.gpu_preferred_regions),
        num_gpus=policy.num_gpus, gpu_name=policy.gpu_name, disk_gb=cfg.gpu_disk_gb,
        interruptible=policy.interruptible, exclude_machine_ids=exclude_machines,
    )


async def search_markets(ctx: ControllerContext, exclude_machines: frozenset[str]) -> list[Offer]:
    """Every market's offers within the limits, best first: preferred region, then price (markets in order
    break ties); a market that does not answer is skipped for this search."""
    found: list[tuple[int, Offer]] = []
    for rank, name in enumerate(ctx.config.gpu_markets):
        market = ctx.market(name)
        try:
            offers = await market.search_offers(offer_query(ctx, market, exclude_machines))
        except DumontError as exc:
            log.warning("no offers from %s this time: %s", name, exc)
            continue
        found += [(rank, offer) for offer in offers]
    found.sort(key=lambda item: (item[1].region_rank, item[1].price_per_hour, item[0]))
    return [offer for _, offer in found]


async def rent_gpu(ctx: ControllerContext, pair: str, *, exclude_machines: frozenset[str], progress: Progress,
                   known_instance: tuple[str, str] | None, in_use: frozenset[str]) -> tuple[HostRef, Instance]:
    """A rented GPU that answers over SSH; raise RentingFailed when every attempt failed (nothing left rented).

    ``known_instance`` is (provider, instance id) of one rented before a restart; ``in_use`` are the pair's own
    instance ids (current and failed hosts), never adopted as a new GPU.
    """
    resumed = await _resume(ctx, pair, known_instance, progress, in_use)
    if resumed is not None:
        return resumed
    progress(RecoveryStep.SEARCHING, {})
    offers = await search_markets(ctx, exclude_machines)
    if not offers:
        raise RentingFailed(f"no offer matches the limits (≤ ${ctx.config.gpu_max_price}/h, ≥ "
                            f"{ctx.config.gpu_min_ram_gb} GB, regions {list(ctx.config.gpu_preferred_regions)}) "
                            f"on {', '.join(ctx.config.gpu_markets)}",
                            hint="raise gpu_max_price or widen gpu_preferred_regions")
    progress(RecoveryStep.SEARCHING, {"offers": len(offers), "best_offer": offers[0].offer_id})
    failures: list[str] = []
    first = ctx.market(ctx.config.gpu_markets[0]).policy
    attempts = max(ctx.market(name).policy.max_attempts for name in ctx.config.gpu_markets)
    delay = first.backoff_initial_seconds
    for attempt, offer in enumerate(offers[:attempts], start=1):
        try:
            return await _try_offer(ctx, pair, offer, progress)
        except (DumontError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, DumontError) else "timed out"
            failures.append(f"offer {offer.offer_id}: {reason}")
            ctx.event(pair, "offer_failed", f"attempt {attempt}: offer {offer.offer_id} on {offer.provider} "
                                            f"({offer.gpu_name}, ${offer.price_per_hour:.2f}/h, {offer.country}) "
                                            f"failed: {reason}")
            if isinstance(exc, ProviderError) and exc.recovery == Recovery.STOP:
                break
            await ctx.sleep(min(delay, first.backoff_max_seconds))  # backoff between attempts
            delay *= 2
    raise RentingFailed(f"every attempt to rent a GPU failed ({'; '.join(failures) or 'no attempt'})",
                        hint="the pair stays on the CPU; check the limits or try `dumont recover` later")


async def _try_offer(ctx: ControllerContext, pair: str, offer: Offer, progress: Progress) -> tuple[HostRef, Instance]:
    progress(RecoveryStep.RENTING, {"offer_id": offer.offer_id, "provider": offer.provider,
                                    "price_per_hour": offer.price_per_hour, "country": offer.country,
                                    "gpu_name": offer.gpu_name})
    market = ctx.market(offer.provider)
    keys = [ctx.controller_public_key(), *ctx.user_public_keys()]
    # A bid of exactly the minimum is the first to be outbid again: the market adds its margin.
    request = LaunchRequest(offer=offer, image=ctx.config.gpu_image, disk_gb=ctx.config.gpu_disk_gb,
                            label=f"dumont-{pair}", ssh_public_keys=keys, bid_price=market.bid_for(offer),
                            onstart=boot_script())
    instance = await market.create(request)
    ctx.store.record_host(instance.provider, instance.instance_id, pair, "gpu", f"rented from offer {offer.offer_id}")
    progress(RecoveryStep.RENTING, {"instance_id": instance.instance_id, "provider": instance.provider})
    try:
        return await _wait_ready(ctx, instance, progress)
    except Exception:  # a bug too: what this attempt rented must not outlive it
        # Cancellation (a controller shutting down) keeps the instance: the restarted controller resumes with it.
        await destroy_quietly(ctx, pair, instance.provider, instance.instance_id, "it did not become usable")
        raise


async def _wait_ready(ctx: ControllerContext, instance: Instance, progress: Progress) -> tuple[HostRef, Instance]:
    """Wait until the provider says running (image pull and boot: vast.launch_timeout_seconds), SSH accepts our
    key (ssh_wait_timeout) and the host is readied (Python, rsync)."""
    progress(RecoveryStep.WAITING_SSH, {"instance_id": instance.instance_id, "provider": instance.provider})
    market = ctx.market(instance.provider)
    launch = market.policy.launch_timeout_seconds
    deadline = ctx.clock() + launch
    while instance.state != InstanceState.RUNNING or not instance.ssh_host:
        if instance.state in (InstanceState.TERMINATED, InstanceState.OFFLINE, InstanceState.OUTBID):
            raise RentingFailed(f"instance {instance.instance_id} went {instance.state} ({instance.raw_state})")
        if instance.state.is_failed:
            raise RentingFailed(f"instance {instance.instance_id} will never run with image {ctx.config.gpu_image}: "
                                f"{instance.status_message or instance.raw_state}",
                                hint="gpu_image must be a published tag (pytorch's end in -runtime or -devel); "
                                     "dumont doctor checks it")
        if ctx.clock() > deadline:
            raise RentingFailed(f"instance {instance.instance_id} was not running after {launch:g} s "
                                f"(state {instance.raw_state})", hint="a first launch can take many minutes; "
                                                                      "raise the market's launch timeout")
        await ctx.sleep(1.0)  # the provider has no push notification; poll, bounded by the deadline
        instance = await market.get(instance.instance_id)
    ref = host_ref(instance, "gpu")
    await ctx.hosts.reach(ref, deadline=ctx.clock() + ctx.config.ssh_wait_timeout)
    await ctx.ensure_ready(ref)
    return ref, instance


async def _resume(ctx: ControllerContext, pair: str, known: tuple[str, str] | None, progress: Progress,
                  in_use: frozenset[str]) -> tuple[HostRef, Instance] | None:
    """An instance rented before a controller restart: the recorded one, or one carrying the pair's label."""
    candidates = [known] if known else []
    if not candidates:
        for name in ctx.config.gpu_markets:
            labelled = await ctx.market(name).list(label=f"dumont-{pair}")
            candidates += [(name, i.instance_id) for i in labelled if i.instance_id not in in_use]
    for provider, instance_id in candidates:
        instance = await ctx.market(provider).get(instance_id)
        if instance.state == InstanceState.TERMINATED:
            continue
        ctx.store.record_host(instance.provider, instance.instance_id, pair, "gpu", "resumed after a restart")
        ctx.event(pair, "recovery_resumed", f"resuming with instance {instance_id}, rented before a restart; "
                                            "nothing new is rented")
        try:
            return await _wait_ready(ctx, instance, progress)
        except Exception:  # a bug too: the resumed instance must not outlive this attempt
            await destroy_quietly(ctx, pair, provider, instance_id, "it did not become usable after the restart")
    return None


async def destroy_quietly(ctx: ControllerContext, pair: str, provider: str, instance_id: str, why: str) -> None:
    """Destroy a rented instance through its own market (never leave a paid instance behind); report, never raise."""
    try:
        async with asyncio.timeout(120):
            await ctx.market(provider).destroy(instance_id)
    except Exception as exc:  # never raise: the caller is already handling a failure
        ctx.event(pair, "cleanup_failed", f"could not destroy instance {instance_id} on {provider} ({why}): {exc}; "
                                          "destroy it by hand to stop paying for it")
        return
    ctx.store.release_host(provider, instance_id, f"destroyed: {why}")
    ctx.event(pair, "instance_destroyed", f"destroyed instance {instance_id} on {provider}: {why}",
              {"instance_id": instance_id, "provider": provider})
