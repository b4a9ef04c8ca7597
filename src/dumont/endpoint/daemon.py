"""The endpoint process: ``python -m dumont.endpoint.daemon --dir DIR`` (or ``dumont endpoint serve --dir DIR``).

It serves every pair's stable SSH endpoint apart from the controller, so a controller crash, restart or upgrade
cuts no session: it keeps forwarding to the primary last published, restores the saved routes when it starts
itself, and stops cleanly (closing its relays) on SIGTERM or SIGINT. See :mod:`dumont.endpoint.server` for what
it answers and :mod:`dumont.endpoint.launch` for how the controller starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from dumont.endpoint.server import EndpointServer
from dumont.errors import DumontError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


async def serve_endpoint(root: Path, *, ready_fd: int | None = None, connect_timeout: float = 5.0) -> None:
    """Serve ``root`` until SIGTERM, SIGINT or a ``shutdown`` request; write our pid to ``ready_fd`` once answering.

    :raises EndpointError: another process serves ``root``, or its routes file cannot be read.
    """
    server = EndpointServer(root, connect_timeout=connect_timeout)
    await server.start()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, _stop_on_signal, server, sig)
        if ready_fd is not None:
            os.write(ready_fd, f"{os.getpid()}\n".encode())
            os.close(ready_fd)
        await server.shutdown_requested.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.stop()


def _stop_on_signal(server: EndpointServer, sig: signal.Signals) -> None:
    log.info("endpoint process %d got %s; stopping", os.getpid(), sig.name)
    server.shutdown_requested.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the endpoint process; return its exit status (1 when it cannot serve the directory)."""
    parser = argparse.ArgumentParser(prog="python -m dumont.endpoint.daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="the endpoint directory (created 0700)")
    parser.add_argument("--ready-fd", type=int, default=None, help="write our pid to this fd once answering")
    parser.add_argument("--background", action="store_true", help="fork once more and return at once")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach a primary")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection (DEBUG)")
    args = parser.parse_args(argv)
    if args.background and os.fork() != 0:
        # The launcher's job is done: the child is nobody's child now, and lives on when its starter dies.
        os._exit(0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT)
    try:
        asyncio.run(serve_endpoint(args.dir.absolute(), ready_fd=args.ready_fd,
                                   connect_timeout=args.connect_timeout))
    except DumontError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
