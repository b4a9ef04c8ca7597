"""The Vast.ai GPU market (:class:`~dumont.providers.base.GpuMarket`) over :class:`VastClient`.

Renting is the one step that costs money, so it is careful: an offer that is gone says so (OfferUnavailable: try
the next one) and leaves the cache; a rent whose answer was lost is looked up by label and machine before anyone
rents again; an instance that cannot be given its SSH keys is destroyed at once, never left running and paid for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dumont.config import VastConfig
from dumont.providers.base import (
    GpuMarket,
    Instance,
    InstanceNotFound,
    InstanceState,
    LaunchRequest,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailable,
    RentPolicy,
)
from dumont.providers.vast.bids import bid_for
from dumont.providers.vast.client import Clock, RetryPolicy, VastClient
from dumont.providers.vast.credentials import load_api_key
from dumont.providers.vast.offers import parse_offers, rank_offers, search_bodies
from dumont.providers.vast.states import PROVIDER, instance_from_payload, terminated

log = logging.getLogger("dumont.providers.vast")

LIST_PAGE_SIZE = 25  # what the CLI asks for; the server caps pages anyway
LIST_MAX_PAGES = 200  # a server that keeps handing out next_token must not keep us paging forever
SSH_RUNTYPE = "ssh_direc ssh_proxy"  # sic: what `vastai create instance --ssh --direct` sends


def create_body(request: LaunchRequest) -> dict[str, Any]:
    """The body of ``PUT /api/v0/asks/{offer}/`` that rents ``request.offer`` (the CLI's fields, cloud-apis §1.5)."""
    offer = request.offer
    bid = None
    if offer.interruptible:
        # Without a price Vast rents a bid offer on demand, at the on-demand price (SKILL.md via cloud-apis §1.5).
        bid = request.bid_price or offer.min_bid or offer.price_per_hour
    return {
        "client_id": "me", "image": request.image, "env": {}, "price": bid, "disk": float(request.disk_gb),
        "label": request.label, "extra": None, "onstart": request.onstart, "image_login": None, "python_utf8": False,
        "lang_utf8": False, "use_jupyter_lab": False, "jupyter_dir": None, "force": False,
        # A recovery wants a machine that runs now; one that cannot be scheduled must fail, not wait stopped.
        "cancel_unavail": True, "template_hash_id": None, "user": None, "runtype": SSH_RUNTYPE,
    }


class OfferCache:
    """The best offers of recent searches, for a short while: the next attempt of a recovery starts from them.

    An offer that proved unrentable is dropped at once; excluded machines are filtered out on the way out.
    """

    def __init__(self, size: int, ttl_seconds: float, clock: Clock = time.monotonic) -> None:
        self.size, self.ttl_seconds, self._clock = size, ttl_seconds, clock
        self._entries: dict[tuple[object, ...], tuple[float, list[Offer], bool]] = {}

    @staticmethod
    def _key(query: OfferQuery) -> tuple[object, ...]:
        return (query.min_gpu_ram_gb, query.max_price_per_hour, query.min_reliability, tuple(query.regions),
                query.num_gpus, query.gpu_name, query.disk_gb, query.interruptible)

    def get(self, query: OfferQuery) -> list[Offer] | None:
        """The cached offers for ``query``, or None when there are none fresh enough to answer it."""
        entry = self._entries.get(self._key(query))
        if entry is None or self._clock() - entry[0] > self.ttl_seconds:
            return None
        _, offers, exhaustive = entry
        if not exhaustive and query.limit > len(offers):
            return None
        usable = [o for o in offers if o.machine_id not in query.exclude_machine_ids]
        return usable[: query.limit] or None

    def put(self, query: OfferQuery, ranked: Sequence[Offer]) -> None:
        """Remember the best ``size`` offers of a search for ``query``."""
        if self.size > 0:
            self._entries[self._key(query)] = (self._clock(), list(ranked[: self.size]), len(ranked) <= self.size)

    def discard(self, offer_id: str) -> None:
        """Forget an offer that could not be rented."""
        for key, (at, offers, exhaustive) in list(self._entries.items()):
            self._entries[key] = (at, [o for o in offers if o.offer_id != offer_id], exhaustive)


@dataclass(frozen=True)
class _Rented:
    instance_id: str


class VastMarket:
    """Vast.ai as a GpuMarket: search, rent, inspect, stop, start and destroy instances."""

    name = PROVIDER

    def __init__(self, client: VastClient, *, cache: OfferCache | None = None, policy: RentPolicy | None = None,
                 bid_margin: float = 0.2, max_price_per_hour: float | None = None) -> None:
        self.client = client
        self.cache = cache or OfferCache(size=8, ttl_seconds=60)
        self.policy = policy or RentPolicy()
        self.bid_margin = bid_margin
        self.max_price_per_hour = max_price_per_hour

    @classmethod
    def from_config(cls, vast: VastConfig, environ: Mapping[str, str] | None = None,
                    *, api_url: str | None = None, retry: RetryPolicy | None = None,
                    max_price_per_hour: float | None = None) -> VastMarket:
        """A market for the ``[vast]`` settings; the key comes from ``vast.api_key_file`` or ``$VAST_API_KEY``."""
        key = load_api_key(vast.api_key_file, environ)
        client = VastClient(api_url or vast.api_url, key, retry=retry, min_interval=vast.min_request_interval_seconds)
        policy = RentPolicy(min_reliability=vast.min_reliability, num_gpus=vast.num_gpus, gpu_name=vast.gpu_name,
                            interruptible=vast.interruptible, max_attempts=vast.max_attempts,
                            backoff_initial_seconds=vast.backoff_initial_seconds,
                            backoff_max_seconds=vast.backoff_max_seconds,
                            launch_timeout_seconds=vast.launch_timeout_seconds)
        return cls(client, cache=OfferCache(size=vast.offer_cache_size, ttl_seconds=60), policy=policy,
                   bid_margin=vast.bid_margin, max_price_per_hour=max_price_per_hour)

    def bid_for(self, offer: Offer) -> float | None:
        """A margin over the minimum bid (a bid of exactly the minimum is outbid first), under the price ceiling."""
        if not offer.interruptible:
            return None
        ceiling = self.max_price_per_hour if self.max_price_per_hour is not None else offer.price_per_hour * 2
        return bid_for(offer, ceiling, self.bid_margin)

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()

    async def search_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers that satisfy ``query``: preferred regions first, then cheapest (recent results reused)."""
        cached = self.cache.get(query)
        if cached is not None:
            return cached
        found: list[Offer] = []
        for body in search_bodies(query):
            answer = await self.client.call("POST", "/api/v0/bundles/", body=body)
            found += parse_offers(answer.get("offers") if isinstance(answer, dict) else None, query)
            if len(rank_offers(found, query)) >= query.limit:
                break  # later preferences cannot outrank a full page of earlier ones
        ranked = rank_offers(found, query)
        self.cache.put(query, ranked)
        return ranked

    async def create(self, request: LaunchRequest) -> Instance:
        """Rent ``request.offer`` and give it the SSH keys; OfferUnavailable when the offer is gone."""
        offer = request.offer
        rented = await self._rent(request)
        try:
            await self.attach_keys(rented.instance_id, request.ssh_public_keys)
        except ProviderError as exc:
            raise await self._abandon(rented.instance_id, offer, exc) from exc
        log.info("rented Vast.ai offer %s on machine %s as instance %s (%s)", offer.offer_id, offer.machine_id,
                 rented.instance_id, request.label)
        try:
            return await self.get(rented.instance_id)
        except ProviderUnavailable:
            return Instance(provider=PROVIDER, instance_id=rented.instance_id, state=InstanceState.PENDING,
                            raw_state="just rented", label=request.label, price_per_hour=offer.price_per_hour,
                            country=offer.country or None, machine_id=offer.machine_id, gpu_name=offer.gpu_name)

    async def attach_keys(self, instance_id: str, keys: Sequence[str]) -> None:
        """Let ``keys`` log in to an existing instance (``vastai attach ssh``); a key it already has is fine.

        Account keys reach only instances created after they were added (docs: guides/instances/connect/ssh), so
        an instance rented or adopted earlier needs its keys attached this way.
        """
        path = f"/api/v0/instances/{_checked_id(instance_id)}/ssh/"
        for key in (k.strip() for k in keys):
            if not key:
                continue
            try:
                answer = await self.client.call("POST", path, body={"ssh_key": key})
            except ProviderRequestError as exc:
                if _says_already(exc.message):
                    continue  # attached before: what was asked is true
                raise
            if isinstance(answer, dict) and answer.get("success") is False and not _says_already(answer.get("msg")):
                raise ProviderRequestError(f"Vast.ai did not attach the key {_key_name(key)} to instance "
                                           f"{instance_id}: {answer.get('msg') or 'no reason given'}",
                                           hint="check that it is an OpenSSH public key line")

    async def copy_between(self, src_id: str, dst_id: str, src_path: str, dst_path: str) -> None:
        """Start copying ``src_path`` of one instance into ``dst_path`` of another (``vastai copy``); a paused
        (outbid or stopped) source works, its disk being kept. Vast answers before the copy is done."""
        body = {"client_id": "me", "src_id": int(_checked_id(src_id)), "dst_id": int(_checked_id(dst_id)),
                "src_path": src_path, "dst_path": dst_path}
        answer = await self.client.call("PUT", "/api/v0/commands/copy_direct/", body=body, idempotent=False)
        if not isinstance(answer, dict) or answer.get("success") is not True:
            msg = answer.get("msg") if isinstance(answer, dict) else answer
            raise ProviderRequestError(f"Vast.ai did not start the copy from instance {src_id} to {dst_id}: "
                                       f"{msg or 'no reason given'}", hint="the data stays on the stopped instance")

    async def account_keys(self) -> list[str]:
        """The public keys of the Vast.ai account (``vastai show ssh-keys``): what an instance created now gets."""
        answer = await self.client.call("GET", "/api/v0/ssh/")
        return account_keys_from(answer)

    async def add_account_key(self, key: str) -> None:
        """Add ``key`` to the account (``vastai create ssh-key``) unless it holds it already.

        It reaches only instances created from now on; use :meth:`attach_keys` for those that exist.
        """
        key = key.strip()
        if not key.startswith("ssh") or len(key.split()) < 2:
            raise ProviderRequestError(f"{_key_name(key) or 'an empty key'} is not an OpenSSH public key",
                                       hint="give one line of a .pub file (ssh-ed25519 AAAA... comment)")
        if any(same_key(key, held) for held in await self.account_keys()):
            return
        answer = await self.client.call("POST", "/api/v0/ssh/", body={"ssh_key": key}, idempotent=False)
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ProviderRequestError(f"Vast.ai did not add the key {_key_name(key)} to the account: "
                                       f"{answer.get('msg') or 'no reason given'}",
                                       hint="check the key, or add it with `vastai create ssh-key`")

    async def _rent(self, request: LaunchRequest) -> _Rented:
        offer = request.offer
        try:
            answer = await self.client.call("PUT", f"/api/v0/asks/{_checked_id(offer.offer_id)}/",
                                            body=create_body(request), idempotent=False, gone=OfferUnavailable)
        except OfferUnavailable as exc:
            self.cache.discard(offer.offer_id)
            raise OfferUnavailable(f"offer {offer.offer_id} ({offer.gpu_name} on machine {offer.machine_id}) "
                                   f"can no longer be rented: {exc.message}", hint="try the next offer") from exc
        except ProviderUnavailable:
            found = await self._find_rented(request)
            if found is None:
                raise
            log.warning("renting offer %s gave no answer, but instance %s was rented from it", offer.offer_id,
                        found.instance_id)
            return found
        contract = answer.get("new_contract") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and answer.get("success") is False:
            self.cache.discard(offer.offer_id)
            raise OfferUnavailable(f"offer {offer.offer_id} was refused: {answer.get('msg') or 'no reason given'}",
                                   hint="try the next offer")
        if not isinstance(contract, int | str) or not str(contract).isdigit():
            raise ProviderRequestError(f"renting offer {offer.offer_id} answered without an instance id "
                                       f"(new_contract={contract!r})",
                                       hint=f"look for an instance labelled {request.label} and destroy it")
        return _Rented(str(contract))

    async def _find_rented(self, request: LaunchRequest) -> _Rented | None:
        """After a rent whose answer was lost: the instance it made, if any (same label, same machine)."""
        try:
            candidates = await self.list(request.label)
        except ProviderError:
            return None
        matches = [i for i in candidates if i.machine_id == request.offer.machine_id
                   and i.state is not InstanceState.TERMINATED]
        return _Rented(matches[-1].instance_id) if matches else None

    async def _abandon(self, instance_id: str, offer: Offer, cause: ProviderError) -> ProviderError:
        """Destroy an instance that cannot be used; return the error that tells the caller what happened."""
        what = f"instance {instance_id} (offer {offer.offer_id}) was rented but refused its SSH keys: {cause.message}"
        try:
            await self.destroy(instance_id)
        except ProviderError as exc:
            return type(cause)(f"{what}; destroying it failed too: {exc.message}",
                               hint=f"destroy instance {instance_id} by hand: it is being paid for")
        return type(cause)(f"{what}; it was destroyed", hint=cause.hint)

    async def get(self, instance_id: str) -> Instance:
        """The instance's record; TERMINATED when Vast no longer knows it."""
        path = f"/api/v0/instances/{_checked_id(instance_id)}/"
        try:
            answer = await self.client.call("GET", path, params={"owner": "me"})
        except InstanceNotFound as exc:
            return terminated(instance_id, f"not found ({exc.message})")
        row = answer.get("instances") if isinstance(answer, dict) else None
        if not isinstance(row, Mapping):
            return terminated(instance_id, "not found (instances: null)")
        return instance_from_payload(row)

    async def list(self, label: str | None = None) -> list[Instance]:
        """Every instance of the account, or only those labelled ``label``."""
        filters = {"label": {"in": [label]}} if label else {}  # the form `vastai show instances --label` sends
        params: dict[str, str | int] = {"select_filters": json.dumps(filters),
                                        "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
                                        "limit": LIST_PAGE_SIZE}
        rows: list[Mapping[str, Any]] = []
        for _ in range(LIST_MAX_PAGES):
            answer = await self.client.call("GET", "/api/v1/instances/", params=params)
            page = answer.get("instances") if isinstance(answer, dict) else None
            rows += [row for row in page or [] if isinstance(row, Mapping)]
            token = answer.get("next_token") if isinstance(answer, dict) else None
            if not token:
                break
            params["after_token"] = str(token)
        instances = [instance_from_payload(row) for row in rows]
        return [i for i in instances if label is None or i.label == label]

    async def stop(self, instance_id: str) -> None:
        """Stop the instance; its disk is kept (and still billed)."""
        await self._set_state(instance_id, "stopped")

    async def start(self, instance_id: str) -> None:
        """Start a stopped instance (subject to the machine being free)."""
        await self._set_state(instance_id, "running")

    async def _set_state(self, instance_id: str, state: str) -> None:
        answer = await self.client.call("PUT", f"/api/v0/instances/{_checked_id(instance_id)}/",
                                        body={"state": state})
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ProviderUnavailable(f"Vast.ai did not set instance {instance_id} to {state}: "
                                      f"{answer.get('msg') or 'no reason given'}", hint="try again later")

    async def destroy(self, instance_id: str) -> None:
        """Destroy the instance and its disk; an instance that is already gone is fine."""
        try:
            await self.client.call("DELETE", f"/api/v0/instances/{_checked_id(instance_id)}/", body={})
        except InstanceNotFound:
            return


def account_keys_from(answer: object) -> list[str]:
    """The live public keys in a ``GET /api/v0/ssh/`` answer.

    The API reference documents a bare list whose items name the key ``key`` (show-ssh-keys), while the create
    page names it ``public_key``; both, and a list under ``ssh_keys``/``keys``, are read. Deleted keys are not.
    """
    rows = answer
    if isinstance(answer, Mapping):
        rows = answer.get("ssh_keys", answer.get("keys"))
    found: list[str] = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping) or row.get("deleted_at"):
            continue
        key = row.get("public_key", row.get("key"))
        if isinstance(key, str) and key.strip():
            found.append(key.strip())
    return found


def same_key(a: str, b: str) -> bool:
    """Whether two public key lines hold the same key (type and data; the comment does not count)."""
    return a.split()[:2] == b.split()[:2]


def _key_name(key: str) -> str:
    """A key as messages name it: its type and comment, never all of its data."""
    parts = key.split()
    return " ".join([parts[0], *parts[2:3]]) if parts else ""


def _says_already(message: object) -> bool:
    # Vast does not document its answer to a key an instance already has; a refusal that says so is success.
    return isinstance(message, str) and any(w in message.lower() for w in ("already", "duplicate"))


def _checked_id(value: str) -> str:
    """An id goes into a URL path: only digits may."""
    if not value.isdigit():
        raise ProviderRequestError(f"Vast.ai ids are numbers, not {value!r}", hint="check the instance or offer id")
    return value


async def rent_first_available(market: GpuMarket, offers: Sequence[Offer],
                               launch: Callable[[Offer], LaunchRequest], *, max_attempts: int) -> Instance:
    """Rent the first of ``offers`` that can still be rented; a gone offer moves on, any other error stops."""
    tried: list[str] = []
    for offer in offers[:max_attempts]:
        try:
            return await market.create(launch(offer))
        except OfferUnavailable as exc:
            log.info("%s; trying the next offer", exc.message)
            tried.append(offer.offer_id)
    raise OfferUnavailable(f"none of the {len(tried)} offer(s) tried could be rented ({', '.join(tried) or 'none'})",
                           hint="search again, or widen the price, RAM or region limits")
