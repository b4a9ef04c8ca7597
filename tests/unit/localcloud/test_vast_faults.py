"""The Vast emulator's market faults: what each request body arms, and what it refuses."""

from __future__ import annotations

import pytest

from dumont.localcloud.emulators.vast_faults import Faults
from dumont.localcloud.emulators.vast_http import Refused


def test_each_fault_arms_what_its_body_says() -> None:
    """throttle with a status and Retry-After, vanish now or next, nossh next; the state reads back as JSON."""
    faults = Faults()
    faults.arm("throttle", {"count": 3, "status": 503, "retry_after": None})
    faults.arm("vanish", {"offer_id": 42})
    faults.arm("vanish", {"next": 2})
    faults.arm("nossh", {})
    assert faults.as_dict() == {"throttle_left": 3, "throttle_status": 503, "retry_after": None, "vanish_next": 2,
                                "vanished": [42], "nossh_next": 1}


def test_a_bad_fault_is_refused() -> None:
    """Throttling with a status that is neither 429 nor 5xx is a 400; an unknown action is a programming error."""
    with pytest.raises(Refused) as refused:
        Faults().arm("throttle", {"status": 404})
    assert refused.value.status == 400
    with pytest.raises(ValueError, match="not a market fault"):
        Faults().arm("outbid", {})
