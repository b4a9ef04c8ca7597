"""Vast.ai: the GPU market recovery rents from (a thin typed HTTP client; see ``client`` for why not the SDK)."""

from dumont.providers.vast.bids import bid_for
from dumont.providers.vast.client import RetryPolicy, VastClient
from dumont.providers.vast.credentials import ApiKey, load_api_key
from dumont.providers.vast.images import image_exists
from dumont.providers.vast.offers import REGIONS, expand_region, filter_body, rank_offers
from dumont.providers.vast.provider import OfferCache, VastMarket, rent_first_available
from dumont.providers.vast.states import instance_from_payload, instance_state

__all__ = [
    "REGIONS",
    "ApiKey",
    "OfferCache",
    "RetryPolicy",
    "VastClient",
    "VastMarket",
    "bid_for",
    "expand_region",
    "filter_body",
    "image_exists",
    "instance_from_payload",
    "instance_state",
    "load_api_key",
    "rank_offers",
    "rent_first_available",
]
