"""Links for the local cloud: round-trip time, bandwidth, stalls, loss and blackholes on loopback, as any user.

Every host of the local cloud sits on 127.0.0.0/8 with no latency and no bandwidth limit, and this kernel has no
``netem``. A :class:`LinkRelay` is a small TCP relay in front of a host's port: each byte waits half the round
trip in each direction, leaves no faster than the rate (a bottleneck with a queue of about two bandwidth-delay
products, so a sender feels back-pressure as it would from a real one), stops for ``stall`` seconds about every
``stall_every`` seconds, and, while ``blackhole`` is set, goes nowhere: nothing is forwarded, nothing is reset,
the sender's window fills and connections hang, which is what a partition looks like from either end.

Fidelity (tests/integration/test_links.py measures it): an SSH round trip within 15% of the set RTT and an
rsync's throughput within 15% of the set rate. What a relay cannot do: drop a packet. ``loss`` is modelled by
its effect on a TCP stream: a segment lost is retransmitted after a timeout, so that chunk (and, in order, all
behind it) arrives one retransmission timeout late (``max(200 ms, 2 RTT)``, Linux's minimum RTO being 200 ms).
A blackholed relay still completes new TCP handshakes (the kernel accepts them) where a real partition would let
the SYN time out; the connection then carries nothing, so ssh waits for a banner that never comes. Its kernel also
acknowledges what a sender writes (until the buffers fill), so the sender's own TCP timeouts (``tcp_user_timeout``,
retransmission give-ups) never fire, as behind a proxy that hangs: whatever waits on it must bound its own wait.

The relays run on an event loop of their own, in a thread, so a busy controller in the same process does not
delay its own packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dumont.errors import UsageError

CHUNK = 64 * 1024
MIN_QUEUE_BYTES = 256 * 1024
MIN_RTO_SECONDS = 0.2
BURST_SECONDS = 0.05


@dataclass(frozen=True)
class LinkSpec:
    """What a link does to the bytes that cross it (both directions alike)."""

    rtt: float = 0.0  # seconds
    rate: float | None = None  # bytes per second; None: as fast as loopback
    stall: float = 0.0  # seconds of silence...
    stall_every: float = 30.0  # ...about this often (seeded jitter of ±20%)
    loss: float = 0.0  # fraction of chunks that arrive one retransmission timeout late
    blackhole: bool = False

    def describe(self) -> str:
        """``180 ms, 200 Mbit/s, 2 s stalls every ~30 s`` (for people)."""
        if self.blackhole:
            return "blackholed: nothing crosses"
        parts = [f"{self.rtt * 1000:.0f} ms RTT"]
        parts.append(f"{self.rate * 8 / 1e6:g} Mbit/s" if self.rate else "no rate limit")
        if self.stall:
            parts.append(f"{self.stall:g} s stalls every ~{self.stall_every:g} s")
        if self.loss:
            parts.append(f"{self.loss:.1%} loss")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready figures."""
        return {"rtt_ms": round(self.rtt * 1000, 3), "rate_mbit": self.rate * 8 / 1e6 if self.rate else None,
                "stall_seconds": self.stall, "stall_every_seconds": self.stall_every, "loss": self.loss,
                "blackhole": self.blackhole}


PROFILES: dict[str, LinkSpec] = {
    "lan": LinkSpec(),
    "wan": LinkSpec(rtt=0.180, rate=200e6 / 8),  # a Vast GPU in Thailand to a GCP VM in Europe
    "bad": LinkSpec(rtt=0.300, rate=20e6 / 8, stall=2.0, stall_every=30.0),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit|kb|mb|gb|bit|b)?(?:/s|ps)?\s*$", re.IGNORECASE)
_RATE_FACTORS = {"bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "b": 1, "kb": 1e3, "mb": 1e6,
                 "gb": 1e9}


def parse_duration(text: str, what: str) -> float:
    """``180ms``, ``2s`` or ``0.5`` (seconds) as seconds; UsageError naming ``what`` otherwise."""
    found = _DURATION.match(str(text))
    if not found:
        raise UsageError(f"{what} {text!r} is not a duration", hint="write it like 180ms or 2s")
    value = float(found.group(1))
    return value / 1000 if found.group(2) == "ms" else value


def parse_rate(text: str, what: str = "--rate") -> float:
    """``200mbit``, ``20Mbit/s``, ``5MB`` as bytes per second; UsageError otherwise."""
    found = _RATE.match(str(text))
    if not found or float(found.group(1)) <= 0:
        raise UsageError(f"{what} {text!r} is not a rate", hint="write it like 200mbit or 25MB (bytes per second)")
    unit = (found.group(2) or "b").lower()
    return float(found.group(1)) * _RATE_FACTORS[unit]


def profile(name: str) -> LinkSpec:
    """A named link profile; UsageError listing the names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(f"no link profile {name!r}", hint="use one of " + ", ".join(PROFILES)) from None


class _Link:
    """The live state of one relay's link: its spec, its stall schedule, and who waits for a change."""

    def __init__(self, spec: LinkSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(seed)  # noqa: S311 - a seeded schedule, replayable, not a secret
        self.changed = asyncio.Event()
        self.next_stall = time.monotonic() + self._gap()

    def _gap(self) -> float:
        return self.spec.stall_every * self.rng.uniform(0.8, 1.2)

    def set(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.next_stall = time.monotonic() + self._gap()
        self.changed.set()
        self.changed = asyncio.Event()

    async def clear_to_send(self) -> None:
        """Return once bytes may leave: not blackholed, not inside a stall."""
        while True:
            if self.spec.blackhole:
                await self.changed.wait()
                continue
            if self.spec.stall > 0:
                now = time.monotonic()
                if now >= self.next_stall:
                    ends = self.next_stall + self.spec.stall
                    if now < ends:
                        await _sleep_or_change(self, ends - now)
                        continue
                    self.next_stall = now + self._gap()
            return

    def late(self) -> float:
        """Extra delay for one chunk: a retransmission timeout when the chunk is 'lost'."""
        if self.spec.loss > 0 and self.rng.random() < self.spec.loss:
            return max(MIN_RTO_SECONDS, 2 * self.spec.rtt)
        return 0.0


async def _sleep_or_change(link: _Link, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(link.changed.wait(), seconds)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
    """One direction: delay, pace and hold the bytes as the link says, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    space = asyncio.Event()
    queued = [0]

    def capacity() -> int:
        spec = link.spec
        return max(MIN_QUEUE_BYTES, int(2 * (spec.rate or 0) * max(spec.rtt, 0.01)))

    async def read() -> None:
        try:
            while True:
                while queued[0] >= capacity():  # a full bottleneck queue: stop reading, the sender feels it
                    space.clear()
                    await space.wait()
                data = await reader.read(CHUNK)
                due = time.monotonic() + link.spec.rtt / 2 + link.late()
                queued[0] += len(data)
                await queue.put((due, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((0.0, b""))

    feeder = asyncio.ensure_future(read())
    next_free = 0.0
    try:
        while True:
            due, data = await queue.get()
            queued[0] -= len(data)
            space.set()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await link.clear_to_send()
            rate = link.spec.rate
            if rate:
                now = time.monotonic()
                # A token bucket BURST_SECONDS deep: a late wake-up is made up for, not lost.
                next_free = max(next_free, now - BURST_SECONDS) + len(data) / rate
                if next_free - now > 0.0005:
                    await asyncio.sleep(next_free - now)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        feeder.cancel()
        with contextlib.suppress(Exception):
            writer.close()


CLOSE_TIMEOUT_SECONDS = 5.0  # how long closing a relay waits for its connections to end


class LinkRelay:
    """TCP relays, each in front of one target port, on their own event loop in a thread."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-relay", daemon=True)
        self._thread.start()
        self._relays: dict[int, tuple[asyncio.Server, _Link, set[asyncio.Task[None]]]] = {}

    def _call(self, work: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await work() if asyncio.iscoroutinefunction(work) else work()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def add(self, target_host: str, target_port: int, spec: LinkSpec, *, listen_host: str = "127.0.0.1",
            listen_port: int = 0) -> int:
        """Relay ``listen_host:listen_port`` (0: any free port) to the target through ``spec``; return the port."""
        async def start() -> int:
            link = _Link(spec, self._seed + len(self._relays))
            tasks: set[asyncio.Task[None]] = set()

            async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                tasks.add(task)
                try:
                    up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
                except OSError:
                    writer.close()
                    return
                try:
                    await asyncio.gather(_pump(reader, up_writer, link), _pump(up_reader, writer, link))
                except asyncio.CancelledError:
                    # Only remove() cancels a connection, and it is the last word on it: ending quietly keeps
                    # Python 3.11's stream callback from logging the cancelled handler as an error.
                    return
                finally:
                    tasks.discard(task)

            server = await asyncio.start_server(connected, listen_host, listen_port)
            port = int(server.sockets[0].getsockname()[1])
            self._relays[port] = (server, link, tasks)
            return port

        return int(self._call(start))

    def set(self, port: int, spec: LinkSpec) -> None:
        """Change a relay's link at once (also for the connections already open)."""
        self._call(lambda: self._relays[port][1].set(spec))

    def remove(self, port: int) -> None:
        """Close the relay on ``port`` and every connection through it."""
        async def stop() -> None:
            server, _, tasks = self._relays.pop(port)
            server.close()
            open_connections = list(tasks)
            for task in open_connections:
                task.cancel()
            if open_connections:
                # Wait for them to end: a connection still cancelling when the loop closes is destroyed pending
                # (asyncio logs "Task was destroyed but it is pending!" after every drill on a link).
                await asyncio.wait(open_connections, timeout=CLOSE_TIMEOUT_SECONDS)
            await server.wait_closed()

        self._call(stop)

    def close(self) -> None:
        """Close every relay and stop the thread."""
        for port in list(self._relays):
            self.remove(port)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def spec_to_dict(spec: LinkSpec) -> dict[str, Any]:
    """A spec as stored in a host's record."""
    return {"rtt": spec.rtt, "rate": spec.rate, "stall": spec.stall, "stall_every": spec.stall_every,
            "loss": spec.loss, "blackhole": spec.blackhole}


def spec_from_dict(data: dict[str, Any]) -> LinkSpec:
    """A spec from a host's record (missing fields: a plain link)."""
    return LinkSpec(rtt=float(data.get("rtt", 0.0)), rate=float(data["rate"]) if data.get("rate") else None,
                    stall=float(data.get("stall", 0.0)), stall_every=float(data.get("stall_every", 30.0)),
                    loss=float(data.get("loss", 0.0)), blackhole=bool(data.get("blackhole", False)))
