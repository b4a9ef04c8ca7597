"""Which controller acts on which pair when several share one store: a lease per pair, renewed by compare-and-set.

Patroni's DCS contract is the model (a leader key with a TTL, updated by compare-and-set), without asking the
controllers' clocks to agree, only to tick at the same rate:

- The owner renews each of its leases every :attr:`Leases.every` seconds (a compare-and-set on the lease's
  ``version``). It acts on a pair until ``sent + ttl/2``, where ``sent`` is its own clock just before the last
  renewal that succeeded was sent; past that it acts no more until a renewal succeeds again.
- Another controller judges expiry on its own clock: a lease whose (owner, version) it has seen unchanged for a
  whole ``ttl`` is expired, and it takes it by compare-and-set on that version.

Why no two act at once: the taker first saw the last version no earlier than it was written, which is after the
owner sent it, so it takes no earlier than ``sent + ttl``: half the TTL after the owner stopped deciding, which
leaves its background work (a pass, an operation) that long to be cancelled. A controller cut off from the store
renews nothing and so stops on time (its store calls fail within a sixth of the TTL: ``store.open_store``); a
paused one finds its deadline passed when it runs again. A write already in flight is still stopped by the
store's epoch compare-and-set and the hosts' epoch fences. Advisory locks would tie ownership to one connection,
and a connection can look alive to the server long after its controller is gone (or dead long before it is); a
row with a version works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dumont.core.ports import Clock, StateStore
from dumont.errors import StoreUnavailable

SAFE_FRACTION = 1 / 2  # of the TTL an owner acts for after its last renewal was sent


@dataclass(frozen=True)
class LeaseChanges:
    """What one round changed: pairs this controller took, and pairs it no longer holds (with the reason)."""

    taken: tuple[str, ...] = ()
    lost: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Seen:
    owner: str
    version: int
    since: float  # our clock when this (owner, version) was first seen


class Leases:
    """This controller's leases on the fleet's pairs (``clock``: a monotonic clock of this machine)."""

    def __init__(self, store: StateStore, owner: str, ttl: float, *, tick: float,
                 clock: Clock = time.monotonic) -> None:
        self.store, self.owner, self.ttl, self.clock = store, owner, ttl, clock
        # Renewals (and looks at others' leases) often enough that a dead owner's pairs are taken within TTL plus
        # one tick, and that an owner survives a missed renewal or two before it must stop.
        self.every = min(ttl / 4, tick / 2)
        self._held: dict[str, tuple[int, float]] = {}  # pair -> (version, acting until)
        self._seen: dict[str, _Seen] = {}  # other controllers' leases as first seen

    def held(self, pair: str) -> bool:
        """Whether this controller may act on ``pair`` now."""
        held = self._held.get(pair)
        return held is not None and self.clock() < held[1]

    def holding(self) -> list[str]:
        """The pairs this controller holds, by name."""
        return sorted(pair for pair in self._held if self.held(pair))

    def next_deadline(self) -> float | None:
        """The soonest time (this clock) a held lease runs out unless renewed first."""
        return min((until for _, until in self._held.values()), default=None)

    def round(self, pairs: Iterable[str]) -> LeaseChanges:
        """Renew what is held, take what is free or expired; what ran out or was taken is lost. Never raises for
        an unreachable store: nothing is renewed then, and the deadlines decide."""
        lost = [(pair, "its lease ran out before a renewal reached the store")
                for pair, (_, until) in self._held.items() if self.clock() >= until]
        for pair, _ in lost:
            del self._held[pair]
        taken: list[str] = []
        try:
            rows = {row.pair: row for row in self.store.leases()}
        except StoreUnavailable:
            return LeaseChanges((), tuple(lost))
        for pair in pairs:
            row = rows.get(pair)
            if row is not None and row.owner not in (self.owner, ""):
                if pair in self._held:
                    del self._held[pair]
                    lost.append((pair, f"controller {row.owner} holds its lease now"))
                if not self._expired(pair, row.owner, row.version):
                    continue
            was_held = pair in self._held
            if self._claim(pair, row.version if row is not None else None):
                if not was_held:
                    taken.append(pair)
            elif was_held:
                del self._held[pair]
                lost.append((pair, "another controller took its lease first"))
        return LeaseChanges(tuple(taken), tuple(lost))

    def release(self, pair: str) -> None:
        """Give up one lease (a pair taken but not brought up): another controller may take it at once."""
        held = self._held.pop(pair, None)
        if held is not None:
            with contextlib.suppress(StoreUnavailable):  # else it runs out on its own
                self.store.release_lease(pair, self.owner, held[0])

    def release_all(self) -> list[str]:
        """Give up every lease held (a clean stop: another controller takes the pairs at once); those released."""
        released = []
        for pair, (version, _) in sorted(self._held.items()):
            try:
                if self.store.release_lease(pair, self.owner, version):
                    released.append(pair)
            except StoreUnavailable:
                pass  # it runs out on its own
        self._held.clear()
        return released

    def _expired(self, pair: str, owner: str, version: int) -> bool:
        seen = self._seen.get(pair)
        now = self.clock()
        if seen is None or (seen.owner, seen.version) != (owner, version):
            self._seen[pair] = _Seen(owner, version, now)
            return False
        return now - seen.since >= self.ttl

    def _claim(self, pair: str, expected: int | None) -> bool:
        sent = self.clock()  # before the write leaves: the taker cannot have seen it any earlier
        try:
            version = self.store.claim_lease(pair, self.owner, expected)
        except StoreUnavailable:
            return pair in self._held  # not renewed this time; the deadline stays as it was
        if version is None:
            return False
        self._held[pair] = (version, sent + SAFE_FRACTION * self.ttl)
        self._seen.pop(pair, None)
        return True
