"""VastMarket over a scripted Vast (httpx.MockTransport): searching, renting carefully, reading, cleaning up."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dumont.providers.base import (
    InstanceState,
    LaunchRequest,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderRequestError,
    ProviderUnavailable,
)
from dumont.providers.vast.client import RetryPolicy, VastClient
from dumont.providers.vast.credentials import ApiKey
from dumont.providers.vast.provider import (
    OfferCache,
    VastMarket,
    account_keys_from,
    create_body,
    rent_first_available,
)

Route = Callable[[httpx.Request], httpx.Response]


@dataclass
class ScriptedVast:
    """Answers by "METHOD path" (path without the query); records every request."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        route = self.routes.get(f"{request.method} {request.url.path}")
        if route is None:
            return httpx.Response(404, json={"success": False, "error": "not_found", "msg": "no route"})
        return route(request)

    def calls(self, prefix: str) -> list[httpx.Request]:
        return [r for r in self.seen if f"{r.method} {r.url.path}".startswith(prefix)]


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


async def _no_sleep(_seconds: float) -> None:
    return None


def _market(vast: ScriptedVast, clock: Clock | None = None) -> VastMarket:
    client = VastClient("http://vast.test", ApiKey("test-api-key-0123", "the key from $VAST_API_KEY"),
                        retry=RetryPolicy(max_attempts=2), transport=httpx.MockTransport(vast.handle),
                        sleep=_no_sleep)
    return VastMarket(client, cache=OfferCache(size=8, ttl_seconds=60, clock=clock or Clock()))


def _ok(data: Any) -> Route:
    return lambda _request: httpx.Response(200, json=data)


def _offer_row(offer_id: int, price: float, where: str) -> dict[str, Any]:
    return {"id": offer_id, "machine_id": offer_id * 10, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564,
            "dph_total": price, "reliability": 0.99, "geolocation": where, "min_bid": round(price - 0.01, 4)}


def _search_by_country(rows: list[dict[str, Any]]) -> Route:
    def search(request: httpx.Request) -> httpx.Response:
        countries = set(json.loads(request.content)["geolocation"]["in"])
        return httpx.Response(200, json={"offers": [r for r in rows if r["geolocation"][-2:] in countries]})

    return search


QUERY = OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=0.5, regions=("TH", "JP", "EU"), limit=2)
ROWS = [_offer_row(1, 0.40, "Bangkok, TH"), _offer_row(2, 0.30, "Bangkok, TH"), _offer_row(3, 0.20, "Tokyo, JP"),
        _offer_row(4, 0.10, "Paris, FR")]


async def test_search_stops_once_the_preferred_regions_fill_the_list() -> None:
    """Given two offers in TH, a limit of 2 needs no search of JP or EU; a repeat comes from the cache."""
    vast = ScriptedVast({"POST /api/v0/bundles/": _search_by_country(ROWS)})
    market = _market(vast)
    offers = await market.search_offers(QUERY)
    assert [o.offer_id for o in offers] == ["2", "1"]
    assert len(vast.calls("POST")) == 1
    assert [o.offer_id for o in await market.search_offers(QUERY)] == ["2", "1"]
    assert len(vast.calls("POST")) == 1, "a fresh cached answer needs no request"


async def test_search_walks_preferences_in_order_and_ranks_them() -> None:
    """With room for more, later preferences are searched and ranked after earlier ones, whatever their price."""
    vast = ScriptedVast({"POST /api/v0/bundles/": _search_by_country(ROWS)})
    offers = await _market(vast).search_offers(OfferQuery(min_gpu_ram_gb=8, max_price_per_hour=0.5,
                                                          regions=("TH", "JP", "EU")))
    assert [(o.offer_id, o.country, o.region_rank) for o in offers] == [
        ("2", "TH", 0), ("1", "TH", 0), ("3", "JP", 1), ("4", "FR", 2)]
    assert [json.loads(r.content)["geolocation"]["in"][:2] for r in vast.calls("POST")][:2] == [["TH"], ["JP"]]


async def test_the_cache_expires_and_respects_exclusions() -> None:
    """Cached offers skip excluded machines; after the TTL the market is asked again."""
    clock = Clock()
    vast = ScriptedVast({"POST /api/v0/bundles/": _search_by_country(ROWS)})
    market = _market(vast, clock)
    await market.search_offers(QUERY)
    excluding = OfferQuery(**{**QUERY.__dict__, "exclude_machine_ids": frozenset({"20"})})
    assert [o.offer_id for o in await market.search_offers(excluding)] == ["1"]
    clock.now = 61
    await market.search_offers(QUERY)
    assert len(vast.calls("POST")) == 2


def _launch(offer: Offer, keys: tuple[str, ...] = ("ssh-ed25519 AAAAcontroller", "ssh-ed25519 AAAAuser")
            ) -> LaunchRequest:
    return LaunchRequest(offer=offer, image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8", disk_gb=50,
                         label="dumont-train", ssh_public_keys=keys)


OFFER = Offer(provider="vast", offer_id="77", machine_id="770", gpu_name="RTX 4090", num_gpus=1, gpu_ram_gb=24.5,
              price_per_hour=0.31, reliability=0.99, country="TH", interruptible=True, min_bid=0.29)
INSTANCE_ROW = {"id": 901, "machine_id": 770, "label": "dumont-train", "actual_status": None,
                "intended_status": "running", "cur_state": "running", "is_bid": True, "ssh_host": "127.0.0.1",
                "ssh_port": 4022, "dph_total": 0.3}


def test_the_rent_body_is_the_clis_with_our_choices() -> None:
    """Interruptible offers are bid at their minimum bid unless told; on demand sends no price; onstart is sent."""
    body = create_body(_launch(OFFER))
    assert body["price"] == 0.29 and body["label"] == "dumont-train" and body["disk"] == 50.0
    assert body["onstart"] is None
    script = "touch ~/.no_auto_tmux\napt-get install -y rsync\n"
    assert create_body(LaunchRequest(**{**_launch(OFFER).__dict__, "onstart": script}))["onstart"] == script
    assert body["runtype"] == "ssh_direc ssh_proxy" and body["client_id"] == "me" and body["env"] == {}
    on_demand = Offer(**{**OFFER.__dict__, "interruptible": False})
    assert create_body(_launch(on_demand))["price"] is None
    chosen = LaunchRequest(**{**_launch(OFFER).__dict__, "bid_price": 0.35})
    assert create_body(chosen)["price"] == 0.35


async def test_create_rents_attaches_every_key_and_reads_the_instance() -> None:
    """A rent gives an id; each SSH key is attached to it; the record comes back PENDING."""
    vast = ScriptedVast({"PUT /api/v0/asks/77/": _ok({"success": True, "new_contract": 901}),
                         "POST /api/v0/instances/901/ssh/": _ok({"success": True}),
                         "GET /api/v0/instances/901/": _ok({"instances": INSTANCE_ROW})})
    instance = await _market(vast).create(_launch(OFFER))
    assert (instance.instance_id, instance.state, instance.ssh_port) == ("901", InstanceState.PENDING, 4022)
    keys = [json.loads(r.content)["ssh_key"] for r in vast.calls("POST /api/v0/instances/901/ssh/")]
    assert keys == ["ssh-ed25519 AAAAcontroller", "ssh-ed25519 AAAAuser"]


async def test_a_vanished_offer_says_try_the_next_and_leaves_the_cache() -> None:
    """404 no_such_ask becomes OfferUnavailable naming the offer; the cache no longer offers it."""
    vast = ScriptedVast({"POST /api/v0/bundles/": _search_by_country(ROWS),
                         "PUT /api/v0/asks/2/": lambda _r: httpx.Response(
                             404, json={"success": False, "error": "no_such_ask",
                                        "msg": "Instance type 2 is not available."})})
    market = _market(vast)
    best = (await market.search_offers(QUERY))[0]
    with pytest.raises(OfferUnavailable, match=r"offer 2 .RTX 4090 on machine 20. can no longer be rented"):
        await market.create(_launch(best))
    assert [o.offer_id for o in await market.search_offers(QUERY)] == ["1"]


async def test_an_instance_that_refuses_its_keys_is_destroyed_at_once() -> None:
    """Never leave a paid instance behind: a failed key attach destroys it and says so."""
    vast = ScriptedVast({"PUT /api/v0/asks/77/": _ok({"success": True, "new_contract": 901}),
                         "POST /api/v0/instances/901/ssh/": lambda _r: httpx.Response(
                             400, json={"success": False, "error": "invalid_args", "msg": "bad key"}),
                         "DELETE /api/v0/instances/901/": _ok({"success": True})})
    with pytest.raises(ProviderRequestError, match=r"instance 901 .offer 77. was rented but refused its SSH keys: "
                                                   r".*bad key; it was destroyed"):
        await _market(vast).create(_launch(OFFER))
    assert len(vast.calls("DELETE /api/v0/instances/901/")) == 1


async def test_a_lost_rent_answer_finds_the_instance_instead_of_renting_twice() -> None:
    """A 503 to the rent is not repeated; the instance it made is found by label and machine."""
    vast = ScriptedVast({"PUT /api/v0/asks/77/": lambda _r: httpx.Response(503, text="upstream timeout"),
                         "GET /api/v1/instances/": _ok({"instances": [INSTANCE_ROW], "next_token": None}),
                         "POST /api/v0/instances/901/ssh/": _ok({"success": True}),
                         "GET /api/v0/instances/901/": _ok({"instances": INSTANCE_ROW})})
    instance = await _market(vast).create(_launch(OFFER, keys=("ssh-ed25519 AAAAk",)))
    assert instance.instance_id == "901"
    assert len(vast.calls("PUT /api/v0/asks/77/")) == 1
    listing = vast.calls("GET /api/v1/instances/")[0]
    assert json.loads(listing.url.params["select_filters"]) == {"label": {"in": ["dumont-train"]}}


async def test_a_lost_rent_answer_with_nothing_rented_is_reported() -> None:
    """When no instance turned up, the caller hears the provider is unavailable, with the lookup hint."""
    vast = ScriptedVast({"PUT /api/v0/asks/77/": lambda _r: httpx.Response(502, text="bad gateway"),
                         "GET /api/v1/instances/": _ok({"instances": [], "next_token": None})})
    with pytest.raises(ProviderUnavailable, match=r"look the instance up by its label"):
        await _market(vast).create(_launch(OFFER))


async def test_get_reports_unknown_instances_as_terminated() -> None:
    """``instances: null`` and 404 both mean the provider no longer knows it."""
    vast = ScriptedVast({"GET /api/v0/instances/5/": _ok({"instances": None})})
    market = _market(vast)
    assert (await market.get("5")).state is InstanceState.TERMINATED
    assert (await market.get("6")).state is InstanceState.TERMINATED  # scripted 404
    assert vast.calls("GET /api/v0/instances/5/")[0].url.params["owner"] == "me"


async def test_outbid_is_reported_as_such() -> None:
    """An interruptible instance stopped while its renter wants it running is OUTBID."""
    row = {**INSTANCE_ROW, "actual_status": "stopped", "intended_status": "running", "cur_state": "stopped"}
    vast = ScriptedVast({"GET /api/v0/instances/901/": _ok({"instances": row})})
    assert (await _market(vast).get("901")).state is InstanceState.OUTBID


async def test_list_pages_through_next_token_and_filters_by_label() -> None:
    """Every page is read; only the label asked for is returned, whatever the server filtered."""
    pages = {None: {"instances": [{**INSTANCE_ROW, "id": 1}], "next_token": "p2"},
             "p2": {"instances": [{**INSTANCE_ROW, "id": 2, "label": "other"}], "next_token": None}}
    vast = ScriptedVast({"GET /api/v1/instances/": lambda r: httpx.Response(
        200, json=pages[r.url.params.get("after_token")])})
    market = _market(vast)
    assert [i.instance_id for i in await market.list()] == ["1", "2"]
    assert [i.instance_id for i in await market.list("dumont-train")] == ["1"]


async def test_stop_start_destroy_send_what_the_cli_sends() -> None:
    """stop/start PUT a state; destroy DELETEs with {} and is fine when the instance is already gone."""
    vast = ScriptedVast({"PUT /api/v0/instances/9/": _ok({"success": True}),
                         "DELETE /api/v0/instances/9/": _ok({"success": True})})
    market = _market(vast)
    await market.stop("9")
    await market.start("9")
    await market.destroy("9")
    await market.destroy("10")  # scripted 404: already gone
    assert [json.loads(r.content) for r in vast.calls("PUT")] == [{"state": "stopped"}, {"state": "running"}]
    assert json.loads(vast.calls("DELETE /api/v0/instances/9/")[0].content) == {}


async def test_a_start_the_market_refuses_is_retryable() -> None:
    """success: false (the machine is busy) means try again later."""
    vast = ScriptedVast({"PUT /api/v0/instances/9/": _ok({"success": False, "msg": "machine unavailable"})})
    with pytest.raises(ProviderUnavailable, match=r"did not set instance 9 to running: machine unavailable"):
        await _market(vast).start("9")


async def test_ids_that_are_not_numbers_never_reach_a_url() -> None:
    """An id goes into a path, so anything but digits is refused before any request."""
    vast = ScriptedVast()
    with pytest.raises(ProviderRequestError, match=r"Vast.ai ids are numbers"):
        await _market(vast).destroy("../users/current")
    assert vast.seen == []


async def test_rent_first_available_moves_past_vanished_offers() -> None:
    """The first offer is gone; the second is rented; the third is never tried."""
    second = Offer(**{**OFFER.__dict__, "offer_id": "78", "machine_id": "780"})
    third = Offer(**{**OFFER.__dict__, "offer_id": "79", "machine_id": "790"})
    vast = ScriptedVast({"PUT /api/v0/asks/78/": _ok({"success": True, "new_contract": 902}),
                         "POST /api/v0/instances/902/ssh/": _ok({"success": True}),
                         "GET /api/v0/instances/902/": _ok({"instances": {**INSTANCE_ROW, "id": 902}})})
    instance = await rent_first_available(_market(vast), [OFFER, second, third], _launch, max_attempts=3)
    assert instance.instance_id == "902"
    assert [r.url.path for r in vast.calls("PUT")] == ["/api/v0/asks/77/", "/api/v0/asks/78/"]
    with pytest.raises(OfferUnavailable, match=r"none of the 1 offer\(s\) tried could be rented \(77\)"):
        await rent_first_available(_market(ScriptedVast()), [OFFER, second], _launch, max_attempts=1)


KEY_A = "ssh-ed25519 AAAAC3NzaA controller@dumont"
KEY_B = "ssh-ed25519 AAAAC3NzaB user@laptop"


async def test_attach_keys_posts_each_key_and_a_key_already_there_is_fine() -> None:
    """Each non-blank key is POSTed as the CLI's attach ssh sends it; a refusal saying "already" is success."""
    def attach(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["ssh_key"] == KEY_B:
            return httpx.Response(400, json={"success": False, "error": "invalid_args", "msg": "Key already added."})
        return httpx.Response(200, json={"success": True, "msg": "SSH key attached successfully"})

    vast = ScriptedVast({"POST /api/v0/instances/901/ssh/": attach})
    await _market(vast).attach_keys("901", [f"  {KEY_A}\n", "", KEY_B])
    assert [json.loads(r.content) for r in vast.calls("POST")] == [{"ssh_key": KEY_A}, {"ssh_key": KEY_B}]


async def test_attach_keys_reports_a_refused_key_by_name_not_by_data() -> None:
    """A key the instance refuses stops with an error; success: false names the key's type and comment only."""
    vast = ScriptedVast({"POST /api/v0/instances/901/ssh/": _ok({"success": False, "msg": "not a key"})})
    with pytest.raises(ProviderRequestError, match=r"did not attach the key ssh-ed25519 controller@dumont to "
                                                   r"instance 901: not a key") as error:
        await _market(vast).attach_keys("901", [KEY_A])
    assert "AAAAC3NzaA" not in str(error.value)
    with pytest.raises(ProviderRequestError, match=r"Vast\.ai ids are numbers"):
        await _market(vast).attach_keys("9/../1", [KEY_A])


@pytest.mark.parametrize("answer", [
    [{"id": 1, "user_id": 5, "key": KEY_A, "created_at": "2026-01-01T00:00:00Z", "deleted_at": None},
     {"id": 2, "user_id": 5, "key": KEY_B, "created_at": "2026-01-01T00:00:00Z", "deleted_at": "2026-02-01"}],
    [{"id": 1, "public_key": KEY_A}, {"id": 3, "public_key": "  "}, "junk"],
    {"ssh_keys": [{"id": 1, "public_key": KEY_A}]},
])
def test_account_keys_are_read_from_every_documented_shape(answer: object) -> None:
    """A bare list (key or public_key) or a list under ssh_keys; deleted and blank keys are left out."""
    assert account_keys_from(answer) == [KEY_A]


async def test_add_account_key_adds_only_what_the_account_lacks() -> None:
    """A held key (same type and data, any comment) sends nothing; a new one is POSTed once; a non-key is refused."""
    held = [{"id": 1, "key": KEY_A, "deleted_at": None}]
    vast = ScriptedVast({"GET /api/v0/ssh/": _ok(held),
                         "POST /api/v0/ssh/": _ok({"success": True, "key": {"id": 2, "public_key": KEY_B}})})
    market = _market(vast)
    assert await market.account_keys() == [KEY_A]
    await market.add_account_key("ssh-ed25519 AAAAC3NzaA another-comment")
    assert vast.calls("POST") == []
    await market.add_account_key(KEY_B)
    assert [json.loads(r.content) for r in vast.calls("POST /api/v0/ssh/")] == [{"ssh_key": KEY_B}]
    for bad in ("", "/home/me/.ssh/id_ed25519.pub", "ssh-ed25519"):
        with pytest.raises(ProviderRequestError, match="is not an OpenSSH public key"):
            await market.add_account_key(bad)
    assert len(vast.calls("POST")) == 1
