"""Our criteria become Vast filter bodies; offers come back ranked by region preference, then price."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.providers.base import Offer, OfferQuery
from dumont.providers.vast.offers import (
    REGIONS,
    expand_region,
    filter_body,
    parse_offer,
    parse_offers,
    rank_offers,
    region_rank,
    search_bodies,
)

SEED_QUERY = OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=0.5, min_reliability=0.98,
                        regions=("TH", "VN", "JP", "EU"), disk_gb=50, interruptible=True, limit=20)


def test_the_seed_defaults_become_the_filter_the_cli_would_send() -> None:
    """The body has the CLI's defaults and units (gpu_ram in MB, dph_total, bid type, storage)."""
    body = filter_body(SEED_QUERY, {"TH"})
    assert body == {
        "verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
        "gpu_ram": {"gte": 8000.0}, "dph_total": {"lte": 0.5}, "reliability": {"gte": 0.98},
        "num_gpus": {"eq": 1}, "disk_space": {"gte": 50}, "geolocation": {"in": ["TH"]},
        "order": [["dph_total", "asc"], ["reliability", "desc"]], "type": "bid", "limit": 20,
        "allocated_storage": 50,
    }


def test_optional_criteria_appear_only_when_set() -> None:
    """A GPU name, excluded machines and on-demand change the body; nothing else is added."""
    query = OfferQuery(min_gpu_ram_gb=24, max_price_per_hour=0.9, gpu_name="RTX 4090", interruptible=False,
                       exclude_machine_ids=frozenset({"12", "7", "abc"}))
    body = filter_body(query)
    assert body["gpu_name"] == {"eq": "RTX 4090"}
    assert body["machine_id"] == {"notin": [12, 7, "abc"]}
    assert body["type"] == "on-demand"
    assert "geolocation" not in body


def test_one_search_per_region_preference_in_order() -> None:
    """Each preference is searched on its own, so a page of cheap offers elsewhere cannot hide it."""
    bodies = search_bodies(SEED_QUERY)
    assert [b["geolocation"]["in"] for b in bodies[:3]] == [["TH"], ["VN"], ["JP"]]
    assert set(bodies[3]["geolocation"]["in"]) == REGIONS["EU"]
    assert len(search_bodies(OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=1))) == 1


def test_region_names_expand_to_country_codes() -> None:
    """EU is the SDK's list; names win over the country sharing their letters; codes stand for themselves."""
    assert {"DE", "NL", "FR", "PL", "GB", "CH", "NO"} <= expand_region("EU")
    assert "TH" not in expand_region("EU")
    assert {"TH", "VN", "JP", "SG", "AF", "SA"} <= expand_region("AS")  # Afghanistan and Saudi Arabia are in Asia
    assert {"US", "CA", "MX"} <= expand_region("NA") and "NA" in expand_region("AF")  # Namibia is in Africa
    assert {"BR", "AR"} <= expand_region("SA") and {"AU", "NZ", "AS"} <= expand_region("OC")
    assert expand_region("th") == {"TH"}
    for codes in REGIONS.values():
        assert all(len(c) == 2 and c.isalpha() and c.isupper() for c in codes)


@pytest.mark.parametrize(("country", "regions", "rank"), [
    ("TH", ("TH", "VN", "JP", "EU"), 0), ("JP", ("TH", "VN", "JP", "EU"), 2), ("DE", ("TH", "VN", "JP", "EU"), 3),
    ("US", ("TH", "VN", "JP", "EU"), None), (None, ("TH",), None), ("US", (), 0), ("JP", ("AS", "JP"), 0),
])
def test_region_rank_is_the_first_preference_holding_the_country(country: str | None, regions: tuple[str, ...],
                                                                  rank: int | None) -> None:
    """The rank is the index of the first matching preference; outside every preference there is none."""
    assert region_rank(country, regions) == rank


def _row(offer_id: int, price: float, where: str, **extra: Any) -> dict[str, Any]:
    row = {"id": offer_id, "machine_id": offer_id + 1000, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576,
           "dph_total": price, "reliability": 0.99, "geolocation": where, "min_bid": price * 0.9}
    row.update(extra)
    return row


def test_ranking_puts_preferred_regions_first_then_price() -> None:
    """A dearer offer in a preferred region beats a cheaper one further down the preferences."""
    rows = [_row(1, 0.20, "Frankfurt, DE"), _row(2, 0.45, "Bangkok, TH"), _row(3, 0.30, "Bangkok, TH"),
            _row(4, 0.10, "Tokyo, JP"), _row(5, 0.10, "Texas, US")]
    ranked = rank_offers(parse_offers(rows, SEED_QUERY), SEED_QUERY)
    assert [o.offer_id for o in ranked] == ["3", "2", "4", "1"]  # Texas is in no preference
    assert [o.region_rank for o in ranked] == [0, 0, 2, 3]


def test_equal_prices_go_to_the_more_reliable_host() -> None:
    """Ties on price are broken by reliability, then by offer id."""
    rows = [_row(1, 0.2, "Bangkok, TH", reliability=0.981), _row(2, 0.2, "Bangkok, TH", reliability=0.999),
            _row(3, 0.2, "Bangkok, TH", reliability=0.999)]
    assert [o.offer_id for o in rank_offers(parse_offers(rows, SEED_QUERY), SEED_QUERY)] == ["2", "3", "1"]


def test_criteria_are_enforced_whatever_the_server_returned() -> None:
    """Too dear, too small, unreliable, excluded, wrong GPU count or name: each is dropped here too."""
    query = OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=0.5, regions=("TH",), gpu_name="rtx 3090",
                       exclude_machine_ids=frozenset({"1006"}))
    rows = [_row(1, 0.51, "Bangkok, TH"), _row(2, 0.2, "Bangkok, TH", gpu_ram=6144),
            _row(3, 0.2, "Bangkok, TH", reliability=0.9), _row(4, 0.2, "Bangkok, TH", num_gpus=2),
            _row(5, 0.2, "Bangkok, TH", gpu_name="RTX 4090"), _row(6, 0.2, "Bangkok, TH"),
            _row(7, 0.2, "Bangkok, TH")]
    assert [o.offer_id for o in rank_offers(parse_offers(rows, query), query)] == ["7"]


def test_duplicates_and_the_limit() -> None:
    """An offer found by two preferences is kept once (its best rank); at most ``limit`` offers come back."""
    query = OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=1, regions=("JP", "AS"), limit=2)
    first = parse_offers([_row(1, 0.3, "Tokyo, JP")], query)
    again = parse_offers([_row(1, 0.3, "Tokyo, JP"), _row(2, 0.2, "Seoul, KR"), _row(3, 0.25, "Hanoi, VN")], query)
    ranked = rank_offers(first + again, query)
    assert [(o.offer_id, o.region_rank) for o in ranked] == [("1", 0), ("2", 1)]


def test_an_offer_row_becomes_an_offer() -> None:
    """Prices, memory (MB → GB as the query language counts), country and minimum bid are read."""
    offer = parse_offer(_row(11, 0.31, "Hanoi, VN", gpu_ram=24564, num_gpus="1", min_bid="0.279"), SEED_QUERY)
    assert offer == Offer(provider="vast", offer_id="11", machine_id="1011", gpu_name="RTX 3090", num_gpus=1,
                          gpu_ram_gb=24.564, price_per_hour=0.31, reliability=0.99, country="VN",
                          interruptible=True, min_bid=0.279, region_rank=1)


@pytest.mark.parametrize("row", [
    {}, {"id": 1}, {"dph_total": 0.2}, {"id": "x", "dph_total": 0.2}, {"id": 1, "dph_total": "free"},
    {"id": -4, "dph_total": 0.2}, {"id": 1.5, "dph_total": 0.2},
])
def test_rows_without_an_id_or_a_price_are_skipped(row: dict[str, Any]) -> None:
    """An offer we cannot name or price cannot be rented safely: it is left out, nothing raises."""
    assert parse_offer(row, SEED_QUERY) is None


def test_sparse_rows_get_safe_defaults() -> None:
    """Missing optional fields do not raise; an offer with no known country ranks after every preference."""
    offer = parse_offer({"ask_contract_id": 9, "dph_total": "0.4"}, SEED_QUERY)
    assert offer is not None
    assert (offer.offer_id, offer.gpu_name, offer.num_gpus, offer.country) == ("9", "unknown", 1, "")
    assert offer.region_rank == len(SEED_QUERY.regions)
    assert parse_offers({"offers": "nope"}, SEED_QUERY) == []
    assert parse_offers([None, 3, {"id": 2, "dph_total": 0.1}], SEED_QUERY)[0].offer_id == "2"
