"""The Vast emulator's market-wide faults, armed through ``/_dumont/faults`` (see the emulator's docstring).

Faults of one instance (outbid, offline) act on its host and live in the emulator; these only change what the
next requests and rents meet: throttling, vanishing offers, hung sshds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dumont.localcloud.emulators.vast_http import Refused, number

MARKET_FAULTS = ("throttle", "vanish", "nossh")  # and "clear", which starts again from Faults()


@dataclass
class Faults:
    """Faults armed through ``/_dumont/faults``."""

    throttle_left: int = 0
    throttle_status: int = 429
    retry_after: float | None = 1.0
    vanish_next: int = 0
    vanished: set[int] = field(default_factory=set)
    nossh_next: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {**asdict(self), "vanished": sorted(self.vanished)}

    def arm(self, action: str, body: dict[str, Any]) -> None:
        """Arm one of :data:`MARKET_FAULTS` from a request body; 400 when the body is bad."""
        if action == "throttle":
            status = int(number(body, "status") or 429)
            if status != 429 and not 500 <= status <= 599:
                raise Refused(400, "invalid_args", f"status must be 429 or 5xx, not {status}")
            self.throttle_left = int(number(body, "count") or 1)
            self.throttle_status = status
            self.retry_after = number(body, "retry_after") if "retry_after" in body else 1.0
        elif action == "vanish" and "offer_id" in body:
            self.vanished.add(int(number(body, "offer_id") or 0))
        elif action == "vanish":
            self.vanish_next = int(number(body, "next") or 1)
        elif action == "nossh":
            self.nossh_next = int(number(body, "next") or 1)
        else:
            raise ValueError(f"{action!r} is not a market fault")
