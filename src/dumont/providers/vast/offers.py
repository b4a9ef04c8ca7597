"""Offer search, pure: our criteria → Vast's filter bodies, offer payloads → ranked :class:`Offer` records.

Regions are preferences in order (SPEC §4.5). Each preference is searched on its own, cheapest first, so a
preferred country's offers are never cut off by a page of cheaper offers elsewhere; the results are then ranked
by preference, then price, then reliability. Every criterion is checked again here on what the server returns:
the price ceiling and the excluded machines are guarantees, not hints.

Region names expand to ISO 3166-1 country codes. A name wins over the country that shares its two letters
(``AS`` is Asia, not American Samoa; ``AF`` Africa, not Afghanistan; ``SA`` South America, not Saudi Arabia;
``NA`` North America, not Namibia); each of those countries is in its continent's list. ``EU`` is the list the
official SDK uses (cloud-apis.md §1.4), which counts the whole of Europe, not only the European Union.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from dumont.providers.base import Offer, OfferQuery
from dumont.providers.vast.states import PROVIDER, as_number, as_whole, country_code

MB_PER_GB: Final = 1000.0  # Vast's query language multiplies gpu_ram by 1000 (cloud-apis.md §1.4)


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


REGIONS: Final[Mapping[str, frozenset[str]]] = {
    "EU": _codes("AL AD AT BY BE BA BG HR CY CZ DK EE FI FR GE DE GR HU IS IT KZ LV LI LT LU MT MD MC ME NL NO "
                 "PL PT RO RU RS SK SI ES SE CH UA GB VA MK"),
    "AS": _codes("AF AM AZ BH BD BT BN KH CN HK IN ID IR IQ IL JP JO KW KG LA LB MO MY MV MN MM NP KP OM PK PS "
                 "PH QA SA SG KR LK SY TW TJ TH TL TR TM AE UZ VN YE"),
    "NA": _codes("US CA MX GT BZ SV HN NI CR PA CU DO HT JM BS BB TT PR AG DM GD KN LC VC BM GL"),
    "SA": _codes("AR BO BR CL CO EC GY PY PE SR UY VE GF FK"),
    "OC": _codes("AU NZ FJ PG SB VU NC PF WS TO KI FM MH PW NR TV GU AS MP"),
    "AF": _codes("DZ AO BJ BW BF BI CV CM CF TD KM CG CD CI DJ EG GQ ER SZ ET GA GM GH GN GW KE LS LR LY MG MW "
                 "ML MR MU MA MZ NA NE NG RW ST SN SC SL SO ZA SS SD TZ TG TN UG ZM ZW"),
}

# Fields the filter body carries besides the criteria; the CLI sends the first three by default.
DEFAULT_FILTERS: Final[Mapping[str, Any]] = {
    "verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
}


def expand_region(name: str) -> frozenset[str]:
    """The country codes a preference stands for: a region name's list, or the country code itself."""
    code = name.strip().upper()
    return REGIONS.get(code, frozenset({code}))


def region_rank(country: str | None, regions: Sequence[str]) -> int | None:
    """The position of the first preference that holds ``country`` (0 when there are no preferences)."""
    if not regions:
        return 0
    if country is None:
        return None
    return next((rank for rank, name in enumerate(regions) if country in expand_region(name)), None)


def filter_body(query: OfferQuery, countries: Iterable[str] | None = None) -> dict[str, Any]:
    """The body of ``POST /api/v0/bundles/`` for ``query``, limited to ``countries`` when given."""
    body: dict[str, Any] = {key: dict(value) for key, value in DEFAULT_FILTERS.items()}
    body.update({
        "gpu_ram": {"gte": query.min_gpu_ram_gb * MB_PER_GB},
        "dph_total": {"lte": query.max_price_per_hour},
        "reliability": {"gte": query.min_reliability},
        "num_gpus": {"eq": query.num_gpus},
        "disk_space": {"gte": query.disk_gb},
    })
    if query.gpu_name:
        body["gpu_name"] = {"eq": query.gpu_name}
    if countries is not None:
        body["geolocation"] = {"in": sorted(countries)}
    if query.exclude_machine_ids:
        excluded = (int(m) if m.isdigit() else m for m in query.exclude_machine_ids)
        body["machine_id"] = {"notin": sorted(excluded, key=str)}
    body.update({
        "order": [["dph_total", "asc"], ["reliability", "desc"]],
        # For "bid", Vast prices dph_total at the minimum bid.
        "type": "bid" if query.interruptible else "on-demand",
        "limit": query.limit,
        "allocated_storage": query.disk_gb,  # the server adds storage at this size to dph_total
    })
    return body


def search_bodies(query: OfferQuery) -> list[dict[str, Any]]:
    """One filter body per region preference, in order (one body in all when there are none)."""
    if not query.regions:
        return [filter_body(query)]
    return [filter_body(query, expand_region(name)) for name in query.regions]


def parse_offer(payload: Mapping[str, Any], query: OfferQuery) -> Offer | None:
    """An Offer from one search row, ranked for ``query``; None when a field we rely on is missing or bad."""
    offer_id = as_whole(payload.get("id", payload.get("ask_contract_id")))
    price = as_number(payload.get("dph_total"))
    if offer_id is None or price is None:
        return None
    country = country_code(payload.get("geolocation"))
    rank = region_rank(country, query.regions)
    machine = as_whole(payload.get("machine_id"))
    gpu_ram_mb = as_number(payload.get("gpu_ram"))
    reliability = as_number(payload.get("reliability", payload.get("reliability2")))
    gpu_name = payload.get("gpu_name")
    return Offer(
        provider=PROVIDER,
        offer_id=str(offer_id),
        machine_id="" if machine is None else str(machine),
        gpu_name=gpu_name.strip() if isinstance(gpu_name, str) and gpu_name.strip() else "unknown",
        num_gpus=as_whole(payload.get("num_gpus")) or 1,
        gpu_ram_gb=0.0 if gpu_ram_mb is None else gpu_ram_mb / MB_PER_GB,
        price_per_hour=price,
        reliability=0.0 if reliability is None else reliability,
        country=country or "",
        interruptible=query.interruptible,
        min_bid=as_number(payload.get("min_bid")),
        region_rank=len(query.regions) if rank is None else rank,
    )


def satisfies(offer: Offer, query: OfferQuery) -> bool:
    """Whether ``offer`` meets every criterion of ``query`` (checked here, whatever the server filtered)."""
    return (
        offer.price_per_hour <= query.max_price_per_hour
        and offer.gpu_ram_gb >= query.min_gpu_ram_gb
        and offer.reliability >= query.min_reliability
        and offer.num_gpus == query.num_gpus
        and (not query.gpu_name or offer.gpu_name.casefold() == query.gpu_name.casefold())
        and offer.machine_id not in query.exclude_machine_ids
        and region_rank(offer.country or None, query.regions) is not None
    )


def rank_offers(offers: Iterable[Offer], query: OfferQuery) -> list[Offer]:
    """The offers that satisfy ``query``, each once: preferred region first, then cheapest, then most reliable."""
    unique: dict[str, Offer] = {}
    for offer in offers:
        if satisfies(offer, query):
            unique.setdefault(offer.offer_id, offer)
    ordered = sorted(unique.values(),
                     key=lambda o: (o.region_rank, o.price_per_hour, -o.reliability, int(o.offer_id)))
    return ordered[: query.limit]


def parse_offers(rows: object, query: OfferQuery) -> list[Offer]:
    """Every usable Offer of a search answer's ``offers`` list (rows that cannot be read are skipped)."""
    if not isinstance(rows, list):
        return []
    parsed = (parse_offer(row, query) for row in rows if isinstance(row, Mapping))
    return [offer for offer in parsed if offer is not None]

