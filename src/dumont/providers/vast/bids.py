"""What to bid for an interruptible Vast.ai offer: a margin above the minimum, never above the price ceiling.

On Vast "the highest bid wins" (docs: choosing/instance-types): an instance bidding exactly ``min_bid`` is the
first to be outbid, so a replacement GPU bids ``min_bid * (1 + margin)``. The ceiling (``gpu_max_price``) is on
what the instance costs per hour, ``dph_total``, which is the bid *plus storage*: a bid offer's ``dph_total`` is
priced at its minimum bid with the search's ``allocated_storage`` (cloud-apis.md §1.4), so the storage part is
``dph_total - min_bid`` and the highest bid that keeps the instance within the ceiling is
``max_price - (dph_total - min_bid)``.
"""

from __future__ import annotations

import math

from dumont.providers.base import Offer

PRICE_STEP = 1e-4  # bids are sent to four decimal places; rounding down keeps the ceiling a guarantee


def bid_for(offer: Offer, max_price_per_hour: float, margin: float) -> float | None:
    """The bid for ``offer``: ``min_bid * (1 + margin)``, lowered so that bid + storage stays ≤ the ceiling.

    None for an offer that is not interruptible (it has no bid). Never below ``min_bid``: an offer whose minimum
    bid already exceeds the ceiling should not have been found (the search filters on dph_total), and bidding
    under the minimum would only rent an instance that is outbid at once. ValueError for a negative margin.
    """
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"a bid margin is a fraction of 0 or more (0.2 bids 20% over the minimum), not {margin!r}")
    if not offer.interruptible or offer.min_bid is None:
        return None
    storage = max(0.0, offer.price_per_hour - offer.min_bid)
    ceiling = max_price_per_hour - storage
    wanted = min(offer.min_bid * (1 + margin), ceiling)
    rounded = math.floor(wanted / PRICE_STEP + 1e-9) * PRICE_STEP
    return round(max(offer.min_bid, rounded), 6)
