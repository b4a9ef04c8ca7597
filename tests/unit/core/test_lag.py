"""A probe that timed out while the controller's own loop stalled is no verdict on the host (bench/fleet.py, 50 pairs:
ten false failovers of healthy GPUs)."""

from __future__ import annotations

import asyncio
import time

from dumont.core import probes
from dumont.core.lag import LoopLag, discount
from dumont.core.model import Health, ProbeResult


def test_the_worst_stall_counts_sleeps_that_ended_in_the_window_and_the_one_overdue_now() -> None:
    now = [100.0]
    lag = LoopLag(every=0.05, clock=lambda: now[0])
    lag.note(10.0, 10.05)  # on time
    lag.note(20.0, 21.05)  # a 1 s stall
    lag.note(30.0, 30.25)  # 0.2 s
    assert round(lag.worst_since(25.0), 6) == 0.2 and round(lag.worst_since(15.0), 6) == 1.0
    assert round(lag.worst_since(20.55), 6) == 0.5, "only the part of a stall after the probe began"
    assert lag.worst_since(40.0) == 0.0
    lag._asked_at = 99.0  # the sleep under way, asked a second ago, has not ended
    assert round(lag.worst_since(40.0), 6) == 0.95 and round(lag.worst_since(99.5), 6) == 0.5


def test_only_a_failure_that_ran_out_its_timeout_in_a_long_enough_stall_is_discounted() -> None:
    results = (ProbeResult("tcp", Health.FAIL, "tcp connect timed out after 0.8 s", 0.81),
               ProbeResult("ssh", Health.FAIL, "Connection refused", 0.01),
               ProbeResult("command", Health.OK, "", 0.3))
    assert discount(results, stall=0.19, timeout=0.8) == results, "a stall under a quarter of the timeout"
    tcp, ssh, command = discount(results, stall=1.5, timeout=0.8)
    assert tcp.health == Health.UNKNOWN and "the controller itself ran 1.5 s late" in tcp.detail
    assert ssh == results[1], "a refusal is the host's own answer, however late the loop"
    assert command == results[2]


async def test_a_healthy_port_times_out_when_the_loop_stalls_and_the_stall_is_seen() -> None:
    """Given a listening port, when the loop is blocked past a TCP probe's deadline, the probe fails although the
    kernel completed the connection at once; the lag monitor saw the stall, and the failure is discounted."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lag = LoopLag(every=0.01)
    lag.start()
    try:
        await asyncio.sleep(0)  # one turn: the sampler's first sleep is under way
        started = lag.clock()
        probe = asyncio.ensure_future(probes._timed("tcp", probes.tcp_probe("127.0.0.1", port, 0.2)))
        await asyncio.sleep(0)  # the connect is under way
        # The fault under test, not a wait: the loop is held up, as a starved controller's is.
        time.sleep(0.4)  # noqa: ASYNC251
        result = await probe
        assert result.health == Health.FAIL and "timed out" in result.detail
        [judged] = discount((result,), lag.worst_since(started), 0.2)
        assert judged.health == Health.UNKNOWN
    finally:
        await lag.stop()
        server.close()
        await server.wait_closed()
