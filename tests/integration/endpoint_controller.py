"""A stand-in for the controller as a process of its own, for the endpoint process's integration tests.

``python -m tests.integration.endpoint_controller --dir DIR --target HOST:PORT --epoch N`` starts the endpoint
process if none answers, serves the pair, routes it to the target and prints ``{"address", "daemon", "pid"}``
on one line. It then refreshes (a heartbeat) every ``--tick`` seconds, as the controller's loop does, and answers
commands on stdin, one JSON object a line (``{"op": "point_to", "target", "epoch"}``, ``{"op": "hold"}``,
``{"op": "close_existing"}``), with one JSON line each. SIGTERM detaches it and it exits 0; so does the end of
stdin, so that a test that dies leaves no controller behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dumont.endpoint import EndpointClient
from dumont.endpoint.routes import parse_listen
from dumont.errors import DumontError

PAIR = "train"


async def tick(client: EndpointClient, every: float) -> None:
    """Refresh every ``every`` seconds, like the controller's loop; a failed one is reported and the loop goes on."""
    while True:
        await asyncio.sleep(every)  # the controller's tick: pacing, not synchronisation
        try:
            await client.refresh()
        except DumontError as exc:
            print(f"refresh failed: {exc}", file=sys.stderr, flush=True)


async def obey(client: EndpointClient, command: dict[str, Any]) -> dict[str, Any]:
    """Carry out one command from the test."""
    op = command["op"]
    if op == "point_to":
        target = tuple(command["target"]) if command["target"] else None
        await client.point_to(target, reason=command.get("reason", "test"), epoch=command["epoch"])  # type: ignore[arg-type]
        return {"ok": True}
    if op == "hold":
        await client.hold(reason="test hold")
        return {"ok": True}
    if op == "close_existing":
        return {"ok": True, "closed": await client.close_existing(reason=command.get("reason", "test"))}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def main(args: argparse.Namespace) -> None:
    client = EndpointClient(args.dir, PAIR, expect_within=args.expect_within)
    address = await client.start(parse_listen(args.listen), hold_timeout=30)
    await client.point_to(parse_listen(args.target), reason=f"the primary at epoch {args.epoch}", epoch=args.epoch)
    print(json.dumps({"address": address, "daemon": client.daemon_pid, "pid": os.getpid()}), flush=True)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    ticking = loop.create_task(tick(client, args.tick))
    stopped = loop.create_task(stopping.wait())
    try:
        while True:
            line = loop.create_task(stdin.readline())
            await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set() or not line.result():
                line.cancel()
                break
            try:
                answer = await obey(client, json.loads(line.result()))
            except DumontError as exc:
                answer = {"ok": False, "error": str(exc)}
            print(json.dumps(answer), flush=True)
    finally:
        ticking.cancel()
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        await client.detach()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--tick", type=float, default=0.2)
    parser.add_argument("--expect-within", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
