"""Nothing escapes: an unexpected exception anywhere in the controller becomes one ``internal_error`` event.

Patroni's loop catches everything and says so; ours does too, at every place the controller calls code that may
have a bug in it: each action, each pair's observation and decision, each tick, each event listener, each API
request, each background task. The traceback goes to the log; the event names where it happened, the pair and
the error. The same failure repeating (same place, same error type and message) is reported once, and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dumont.errors import DumontError

log = logging.getLogger("dumont.controller")


def reason_of(exc: BaseException) -> str:
    """A failure in a few words for an event: our errors' message, a deadline, or a bug's type and text."""
    if isinstance(exc, DumontError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"unexpected {type(exc).__name__}: {exc}"

EventRecorder = Callable[[str | None, str, str, dict[str, Any]], None]


@dataclass
class InternalErrors:
    """Unexpected exceptions seen so far, reported once each; ``record`` writes the event (never raises)."""

    record: EventRecorder
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every unexpected exception caught, repeats included (a metric)."""
        return sum(self.counts.values())

    def report(self, where: str, exc: BaseException, pair: str | None = None) -> bool:
        """Log ``exc`` with its traceback and record one event for a new failure; True when it was new."""
        key = (where, type(exc).__name__, str(exc)[:200])
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen:
            log.debug("%s: %s failed again (%d times): %s", pair or "controller", where, seen + 1, exc)
            return False
        log.error("%s: unexpected error in %s; the controller goes on (please report it as a bug)",
                  pair or "controller", where, exc_info=exc)
        reason = f"unexpected error in {where}: {type(exc).__name__}: {exc}; the controller goes on"
        try:
            self.record(pair, "internal_error", reason, {"where": where, "error": type(exc).__name__})
        except Exception:  # the event store itself is failing: the log line above is all that is left
            log.exception("could not record the internal error")
        return True
