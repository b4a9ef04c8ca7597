"""The Vast emulator's market: a seeded catalogue, Vast's filter language, ordering; and derived statuses."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.localcloud.emulators.vast_instances import VastInstance, status
from dumont.localcloud.emulators.vast_market import (
    DEFAULT_SEED,
    generate_catalogue,
    matches,
    order_rows,
    priced,
    search,
)
from dumont.localcloud.hosts import HostState, LocalHost

CLI_DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


def test_the_catalogue_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    """A seed is a reproducible market."""
    assert generate_catalogue(7) == generate_catalogue(7)
    assert generate_catalogue(7) != generate_catalogue(8)


def test_the_catalogue_looks_like_vast() -> None:
    """Realistic models, MB of memory, prices, reliabilities, countries and unique ids."""
    offers = generate_catalogue(DEFAULT_SEED)
    assert len({o["id"] for o in offers}) == len(offers) == len({o["machine_id"] for o in offers})
    assert all(0.9 <= o["reliability"] <= 0.999 for o in offers)
    assert all(o["geolocation"][-2:].isupper() and ", " in o["geolocation"] for o in offers)
    rtx4090 = [o for o in offers if o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1]
    assert rtx4090 and all(o["gpu_ram"] == 24564 for o in rtx4090)
    assert all(0.29 <= o["min_bid"] <= o["dph_base"] <= 0.91 for o in rtx4090)
    assert {"TH", "VN", "JP", "DE", "NL", "US"} <= {o["geolocation"][-2:] for o in offers}


@pytest.mark.parametrize("seed", [DEFAULT_SEED, 0, 1, 99, 12345])
@pytest.mark.parametrize("kind", ["bid", "on-demand"])
def test_every_seed_can_serve_the_default_criteria(seed: int, kind: str) -> None:
    """≤ $0.50/h with 50 GB of storage, ≥ 8 GB, reliability ≥ 0.98, in each of TH, VN, JP and the EU."""
    body = {**CLI_DEFAULTS, "gpu_ram": {"gte": 8000.0}, "dph_total": {"lte": "0.5"},
            "reliability": {"gte": "0.98"}, "num_gpus": {"eq": "1"}, "type": kind, "allocated_storage": 50.0}
    for countries in (["TH"], ["VN"], ["JP"], ["DE", "NL", "FR", "PL"]):
        found = search(generate_catalogue(seed), {**body, "geolocation": {"in": countries}})
        assert len(found) >= 2, (seed, kind, countries)


OFFER = generate_catalogue(DEFAULT_SEED)[0]


def test_string_numbers_compare_as_numbers() -> None:
    """The CLI leaves most numbers as strings (dph<=0.5 → "0.5"); they compare numerically."""
    row = priced(OFFER, "on-demand", 5.0)
    assert matches(row, {"dph_total": {"lte": str(row["dph_total"])}, "num_gpus": {"eq": "1"}})
    assert not matches(row, {"dph_total": {"lt": str(row["dph_total"])}})
    assert matches(row, {"gpu_ram": {"gte": 8000.0}, "reliability": {"gt": "0.9"}})


def test_geolocation_compares_the_country_code() -> None:
    """``geolocation in [TH,VN]`` matches "Bangkok, TH"; notin and eq work the same way."""
    row = {**priced(OFFER, "bid", 5.0), "geolocation": "Bangkok, TH"}
    assert matches(row, {"geolocation": {"in": ["TH", "VN"]}})
    assert not matches(row, {"geolocation": {"notin": ["TH"]}})
    assert matches(row, {"geolocation": {"eq": "th"}})


def test_names_booleans_and_unknown_fields() -> None:
    """GPU names match with spaces, booleans match true/"true", unknown fields and control keys are ignored."""
    row = {**priced(OFFER, "bid", 5.0), "gpu_name": "RTX 4090"}
    assert matches(row, {"gpu_name": {"eq": "RTX 4090"}, "verified": {"eq": row["verified"]},
                         "no_such_field": {"eq": 1}, "order": [["score", "desc"]], "type": "bid", "limit": 3})
    assert matches(row, {"rentable": {"eq": "true"}})
    assert not matches(row, {"gpu_name": {"in": ["RTX 3090", "A100 SXM4"]}})
    assert not matches(row, {"gpu_name": {"gt": 3}})  # a name is not a number


def test_bid_searches_price_at_the_minimum_bid_plus_storage() -> None:
    """For type bid, dph_total is the minimum bid; storage at allocated_storage adds to both."""
    bid, on_demand = priced(OFFER, "bid", 0.0), priced(OFFER, "on-demand", 0.0)
    assert bid["dph_total"] == pytest.approx(OFFER["min_bid"]) and bid["is_bid"]
    assert on_demand["dph_total"] == pytest.approx(OFFER["dph_base"]) and not on_demand["is_bid"]
    assert priced(OFFER, "bid", 720.0)["dph_total"] == pytest.approx(OFFER["min_bid"] + OFFER["storage_cost"])


def test_order_and_limit() -> None:
    """Rows sort by each key in turn (desc or asc), missing values last; limit cuts the result."""
    rows: list[dict[str, Any]] = [{"id": 1, "a": 2, "b": 1}, {"id": 2, "a": 1}, {"id": 3, "a": 2, "b": 5},
                                  {"id": 4}]
    assert [r["id"] for r in order_rows(rows, [["a", "asc"], ["b", "desc"]])] == [2, 3, 1, 4]
    found = search(generate_catalogue(DEFAULT_SEED), {"order": [["dph_total", "asc"]], "limit": 5})
    assert len(found) == 5
    assert [r["dph_total"] for r in found] == sorted(r["dph_total"] for r in found)
    assert len(search(generate_catalogue(DEFAULT_SEED), {})) == 64  # Vast's page when no limit is given


PUBLISHED = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"
UNPUBLISHED = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8"  # pytorch tags always end in -runtime or -devel


def _instance(**changes: Any) -> VastInstance:
    values: dict[str, Any] = dict(id=1, host="vast-1", offer=priced(OFFER, "bid", 10), image=PUBLISHED, disk=10.0,
                                  label=None, runtype="ssh", bid_price=0.3, env={}, onstart=None, created_at=100.0,
                                  started_at=100.0)
    values.update(changes)
    return VastInstance(**values)


def _host(state: HostState) -> LocalHost:
    return LocalHost(name="vast-1", root="/nowhere", port=2222, user="me", mark="x/vast-1", host_public_key="k",
                     state=state)


@pytest.mark.parametrize(("instance", "host", "now", "expected"), [
    (_instance(booting=True), _host(HostState.STOPPED), 100.1, (None, "running")),  # provisioning
    (_instance(booting=True), _host(HostState.STOPPED), 100.6, ("loading", "running")),
    (_instance(booting=True), _host(HostState.STOPPED), 200.0, ("loading", "running")),  # until its host is up
    (_instance(booting=True), _host(HostState.KILLED), 100.6, ("offline", "running")),  # died while loading
    (_instance(), _host(HostState.RUNNING), 101.0, ("running", "running")),
    (_instance(), _host(HostState.PARTITIONED), 200.0, ("running", "running")),  # the API cannot tell
    (_instance(), _host(HostState.KILLED), 200.0, ("offline", "running")),
    (_instance(), None, 200.0, ("offline", "running")),
    (_instance(outbid=True), _host(HostState.STOPPED), 200.0, ("stopped", "stopped")),
    (_instance(intended="stopped"), _host(HostState.STOPPED), 200.0, ("stopped", "stopped")),
    (_instance(), _host(HostState.STOPPED), 200.0, ("exited", "running")),  # stopped behind Vast's back
    (_instance(image=UNPUBLISHED), _host(HostState.STOPPED), 100.1, (None, "running")),
    (_instance(image=UNPUBLISHED), _host(HostState.STOPPED), 9999.0, ("created", "running")),  # never runs
    (_instance(image=UNPUBLISHED, intended="stopped"), _host(HostState.STOPPED), 200.0, ("stopped", "stopped")),
])
def test_status_is_derived_from_the_host_and_the_clock(instance: VastInstance, host: LocalHost | None, now: float,
                                                        expected: tuple[str | None, str]) -> None:
    """With a 1 s delay: null, loading until the host is up, then running; faults and intents as in the table."""
    actual, cur_state, message = status(instance, host, now, delay=1.0)
    assert (actual, cur_state) == expected
    assert message
    if actual == "created":
        assert message == f"Error response from daemon: manifest for {UNPUBLISHED} not found: manifest unknown: " \
                          "manifest unknown"


# The two search bodies the official CLI 1.9.1 sent in the recorded session (research/vastai-cli-1.9.1-requests).
RECORDED_BODIES = [
    {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "gpu_ram": {"gte": 8000.0},
     "dph_total": {"lte": "0.5"}, "geolocation": {"in": ["TH", "VN", "JP"]}, "order": [["score", "desc"]],
     "type": "on-demand", "allocated_storage": 5.0},
    {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "gpu_ram": {"gte": 8000.0},
     "dph_total": {"lte": "0.5"}, "reliability": {"gt": "0.98"}, "num_gpus": {"eq": "1"},
     "gpu_name": {"eq": "RTX 4090"}, "order": [["dph_total", "asc"]], "type": "bid", "limit": 20,
     "allocated_storage": 50.0},
]


@pytest.mark.parametrize("body", RECORDED_BODIES)
def test_recorded_cli_bodies_select_and_order_as_asked(body: dict[str, Any]) -> None:
    """Each recorded body finds offers, every one of them matching, in the order and number it asks for."""
    found = search(generate_catalogue(DEFAULT_SEED), body)
    assert found and len(found) <= body.get("limit", 64)
    assert all(o["verified"] and o["gpu_ram"] >= 8000 and o["dph_total"] <= 0.5 for o in found)
    assert all(o["is_bid"] == (body["type"] == "bid") for o in found)
    (field, direction), = body["order"]
    values = [o[field] for o in found]
    assert values == sorted(values, reverse=direction == "desc")
    if "gpu_name" in body:
        assert {o["gpu_name"] for o in found} == {"RTX 4090"} and all(o["reliability"] > 0.98 for o in found)
    else:
        assert {o["geolocation"][-2:] for o in found} <= {"TH", "VN", "JP"}
