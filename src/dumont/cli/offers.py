"""``dumont offers``: the GPUs a recovery would rent right now, in the order it would try them."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dumont.cli.common import emit, json_option
from dumont.cli.local import resolve_state_dir, state_dir_option
from dumont.errors import LocalCloudError, UsageError
from dumont.localcloud import control

if TYPE_CHECKING:
    from dumont.config import Config
    from dumont.providers.base import Offer, OfferQuery
    from dumont.providers.vast import VastMarket

CLI_RETRY_BUDGET_SECONDS = 30.0  # each Vast call of the command, all its attempts together


def _regions(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    regions = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    bad = [r for r in regions if len(r) != 2 or not r.isalpha()]
    if bad:
        raise UsageError(f"--regions {text!r}: {', '.join(bad)} is not a country code or region name",
                         hint="give 2-letter codes or EU, AS, NA, SA, OC, AF, comma-separated, preferred first")
    return regions


def build_query(config: Config, *, max_price: float | None, min_gpu_ram: float | None, regions: str | None,
                min_reliability: float | None, gpu_name: str | None, num_gpus: int | None,
                interruptible: bool | None, exclude: tuple[str, ...], limit: int) -> OfferQuery:
    """The recovery's criteria from the config, with each option given on the command line taking over."""
    from dumont.providers.base import OfferQuery

    return OfferQuery(
        min_gpu_ram_gb=config.gpu_min_ram_gb if min_gpu_ram is None else min_gpu_ram,
        max_price_per_hour=config.gpu_max_price if max_price is None else max_price,
        min_reliability=config.vast.min_reliability if min_reliability is None else min_reliability,
        regions=_regions(regions) or config.gpu_preferred_regions,
        num_gpus=config.vast.num_gpus if num_gpus is None else num_gpus,
        gpu_name=gpu_name or config.vast.gpu_name,
        disk_gb=config.gpu_disk_gb,
        interruptible=config.vast.interruptible if interruptible is None else interruptible,
        exclude_machine_ids=frozenset(exclude),
        limit=limit,
    )


def _market(config_file: Path | None, config: Config, state_dir: Path | None) -> tuple[VastMarket, str]:
    """The Vast market of the config, or else of the running local cloud; and the URL it talks to."""
    from dumont.providers.vast import RetryPolicy, VastClient, VastMarket, load_api_key
    from dumont.providers.vast.provider import OfferCache

    retry = RetryPolicy(budget_seconds=CLI_RETRY_BUDGET_SECONDS)
    if config_file is not None:
        return VastMarket.from_config(config.vast, retry=retry), config.vast.api_url
    directory = resolve_state_dir(state_dir)
    ready = control.read_ready(directory)
    if ready is None or not ready.get("vast_url"):
        raise LocalCloudError(f"no local cloud with a Vast API is running in {directory}",
                              hint="start one with `dumont local up`, or pass --config for the real Vast.ai")
    url = str(ready["vast_url"])
    client = VastClient(url, load_api_key(directory / "vast_api_key"), retry=retry)
    return VastMarket(client, cache=OfferCache(size=0, ttl_seconds=0)), url


async def _search(market: VastMarket, query: OfferQuery) -> list[Offer]:
    try:
        return await market.search_offers(query)
    finally:
        await market.close()


def describe_criteria(query: OfferQuery) -> str:
    """The criteria in one line, as the recovery applies them."""
    regions = " > ".join(query.regions) if query.regions else "anywhere"
    kind = "interruptible" if query.interruptible else "on demand"
    parts = [f"≤ ${query.max_price_per_hour:g}/h", f"≥ {query.min_gpu_ram_gb:g} GB GPU RAM",
             f"reliability ≥ {query.min_reliability:g}", f"{query.num_gpus} GPU(s)", f"regions {regions}", kind,
             f"disk {query.disk_gb:g} GB"]
    if query.gpu_name:
        parts.insert(0, query.gpu_name)
    if query.exclude_machine_ids:
        parts.append("excluding machine(s) " + ", ".join(sorted(query.exclude_machine_ids)))
    return ", ".join(parts)


def _table(data: dict[str, Any]) -> str:
    head = f"Offers the recovery would rent, in order ({data['criteria_text']}), from {data['source']}:"
    if not data["offers"]:
        return f"{head}\n  none: loosen --max-price, --min-gpu-ram, --min-reliability or --regions"
    lines = [head, f"  {'#':>2}  {'OFFER':<9} {'GPU':<16} {'RAM':>7} {'$/H':>7} {'RELIAB':>7}  {'WHERE':<6}"
                   f"{'PREF':<6}MACHINE"]
    for index, offer in enumerate(data["offers"], start=1):
        preference = data["criteria"]["regions"][offer["region_rank"]] if data["criteria"]["regions"] else "-"
        gpu = f"{offer['num_gpus']}x {offer['gpu_name']}"
        lines.append(f"  {index:>2}  {offer['offer_id']:<9} {gpu:<16} {offer['gpu_ram_gb']:>5.1f}GB "
                     f"{offer['price_per_hour']:>7.4f} {offer['reliability']:>7.4f}  {offer['country']:<6}"
                     f"{preference:<6}{offer['machine_id']}")
    return "\n".join(lines)


@click.command("offers")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Search the Vast.ai of this config (default: the running local cloud's).")
@click.option("--max-price", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Highest $/h (dph_total) [config: gpu_max_price].")
@click.option("--min-gpu-ram", type=click.FloatRange(min=0), default=None,
              help="Least GPU memory in GB [config: gpu_min_ram_gb].")
@click.option("--regions", default=None, metavar="LIST",
              help="Country codes or region names, preferred first, e.g. TH,VN,JP,EU [config: gpu_preferred_regions].")
@click.option("--min-reliability", type=click.FloatRange(0, 1), default=None,
              help="Least host reliability, 0 to 1 [config: vast.min_reliability].")
@click.option("--gpu-name", default=None, help='Only this GPU model, e.g. "RTX 4090" [config: vast.gpu_name].')
@click.option("--num-gpus", type=click.IntRange(min=1), default=None, help="GPUs per machine [config: vast.num_gpus].")
@click.option("--interruptible/--on-demand", default=None, help="Rental type [config: vast.interruptible].")
@click.option("--exclude-machine", "exclude", multiple=True, metavar="ID", help="Leave out this machine (repeatable).")
@click.option("--limit", type=click.IntRange(min=1, max=500), default=10, show_default=True,
              help="How many offers to show.")
@state_dir_option
@json_option
def offers_command(config_file: Path | None, max_price: float | None, min_gpu_ram: float | None,
                   regions: str | None, min_reliability: float | None, gpu_name: str | None, num_gpus: int | None,
                   interruptible: bool | None, exclude: tuple[str, ...], limit: int, state_dir: Path | None,
                   as_json: bool) -> None:
    """Show what the recovery would rent now: the matching offers, preferred regions first, then cheapest."""
    from dumont.config import default_config, load_config
    from dumont.providers.vast.offers import expand_region

    config = load_config(config_file) if config_file is not None else default_config()
    query = build_query(config, max_price=max_price, min_gpu_ram=min_gpu_ram, regions=regions,
                        min_reliability=min_reliability, gpu_name=gpu_name, num_gpus=num_gpus,
                        interruptible=interruptible, exclude=exclude, limit=limit)
    market, url = _market(config_file, config, state_dir)
    found = asyncio.run(_search(market, query))
    criteria = {**asdict(query), "regions": list(query.regions),
                "exclude_machine_ids": sorted(query.exclude_machine_ids),
                "countries": {r: sorted(expand_region(r)) for r in query.regions}}
    data = {"source": url, "criteria": criteria, "criteria_text": describe_criteria(query),
            "offers": [asdict(o) for o in found]}
    emit(data, as_json=as_json, human=_table)
