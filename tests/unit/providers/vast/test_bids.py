"""The bid for an interruptible offer: a margin over the minimum, lowered to keep bid + storage within the ceiling."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dumont.providers.base import Offer
from dumont.providers.vast.bids import bid_for

# dph_total 0.31 at a minimum bid of 0.29: storage at the searched disk size is 0.02 $/h.
OFFER = Offer(provider="vast", offer_id="77", machine_id="770", gpu_name="RTX 4090", num_gpus=1, gpu_ram_gb=24.5,
              price_per_hour=0.31, reliability=0.99, country="TH", interruptible=True, min_bid=0.29)


@pytest.mark.parametrize(("max_price", "margin", "expected"), [
    (0.50, 0.2, 0.348),  # 0.29 * 1.2, well under the ceiling
    (0.50, 0.0, 0.29),  # no margin: the minimum
    (0.35, 0.2, 0.33),  # capped: 0.33 + 0.02 storage = the 0.35 ceiling
    (0.31, 0.2, 0.29),  # the ceiling leaves no room above the minimum
    (0.30, 0.2, 0.29),  # below the minimum is never bid (such an offer is not found by the search)
    (0.50, 0.123456, 0.3258),  # rounded down to 4 decimals
])
def test_the_bid_is_the_margin_over_min_bid_within_the_ceiling(max_price: float, margin: float,
                                                               expected: float) -> None:
    """Each (ceiling, margin) gives its bid; whenever the offer fits the ceiling, bid + storage stays within it."""
    bid = bid_for(OFFER, max_price, margin)
    assert bid == pytest.approx(expected, abs=1e-9)
    assert bid is not None
    if OFFER.price_per_hour <= max_price:
        assert bid + (OFFER.price_per_hour - 0.29) <= max_price + 1e-9


def test_on_demand_has_no_bid_and_a_negative_margin_is_refused() -> None:
    """An on-demand offer gets None; a margin below 0 (or not a number) raises with the accepted form."""
    assert bid_for(replace(OFFER, interruptible=False, min_bid=None), 0.5, 0.2) is None
    assert bid_for(replace(OFFER, min_bid=None), 0.5, 0.2) is None
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="a fraction of 0 or more"):
            bid_for(OFFER, 0.5, bad)
