"""``ssh``'s ProxyCommand for a fleet's endpoints: connect to the first endpoint that serves, in the given order.

Usage: ``python3 fallthrough.py HOST:PORT [HOST:PORT ...]`` (the ``ssh_config`` snippet runs it). Standard input
and output carry the SSH stream, as ``ssh -W`` would. An endpoint that refuses the connection, does not accept it
within the connect timeout, or closes it before sending a byte (an endpoint whose controller is silent refuses
new connections that way) is skipped, and what the client had sent so far is sent again to the next one. The
first byte from an endpoint (the SSH server's greeting) settles the choice; from then on the bytes are only
copied, both ways, until both directions end.

It runs on the user's machine with any Python 3.8+, alone: it imports nothing from Dumont.
"""

import os
import selectors
import socket
import sys
from typing import List, Optional, Tuple

CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


def parse(argument: str) -> Tuple[str, int]:
    """``host:port`` (``[v6]:port``) from the command line; exit 2 naming the argument when it is not one."""
    host, _, port = argument.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        sys.stderr.write(f"dumont fallthrough: {argument!r} is not a HOST:PORT endpoint address\n")
        sys.exit(2)
    return host, int(port)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def attempt(address: Tuple[str, int], sent: bytearray) -> Tuple[Optional[socket.socket], bytes, str]:
    """Connect and wait for the endpoint's first byte, sending the client's bytes meanwhile (kept in ``sent``,
    for the next endpoint should this one fail). Returns (socket, first bytes, "") or (None, b"", why)."""
    try:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        return None, b"", exc.strerror or str(exc)
    sock.settimeout(None)  # blocking from here: the selector says when a read will not wait
    try:
        if sent:
            sock.sendall(bytes(sent))
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            _register_stdin(selector)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is sock:
                        data = sock.recv(CHUNK)
                        if not data:
                            sock.close()
                            return None, b"", "closed before sending a byte"
                        return sock, data, ""
                    data = os.read(0, CHUNK)
                    if not data:
                        selector.unregister(0)  # the client is done sending; still wait for the greeting
                        continue
                    sent.extend(data)
                    sock.sendall(data)
    except ConnectionResetError:  # closed with the client's bytes unread: the same refusal
        sock.close()
        return None, b"", "closed before sending a byte"
    except OSError as exc:
        sock.close()
        return None, b"", exc.strerror or str(exc)


def _register_stdin(selector: selectors.BaseSelector) -> bool:
    try:
        selector.register(0, selectors.EVENT_READ)
    except (ValueError, OSError):  # stdin closed already
        return False
    return True


def relay(sock: socket.socket, first: bytes) -> None:
    """Copy both ways until both directions have ended."""
    write_all(1, first)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        reading_stdin = _register_stdin(selector)
        reading_sock = True
        while reading_stdin or reading_sock:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = sock.recv(CHUNK)
                    if not data:
                        selector.unregister(sock)
                        reading_sock = False
                        os.close(1)
                        continue
                    write_all(1, data)
                else:
                    data = os.read(0, CHUNK)
                    if not data:
                        selector.unregister(0)
                        reading_stdin = False
                        sock.shutdown(socket.SHUT_WR)
                        continue
                    sock.sendall(data)
            if not reading_sock:
                break  # the server ended the session: what the client still sends has nowhere to go
    sock.close()


def main(arguments: List[str]) -> int:
    if not arguments:
        sys.stderr.write("usage: fallthrough.py HOST:PORT [HOST:PORT ...]\n")
        return 2
    addresses = [parse(argument) for argument in arguments]
    sent = bytearray()
    failures = []
    for address in addresses:
        sock, first, why = attempt(address, sent)
        if sock is not None:
            relay(sock, first)
            return 0
        failures.append(f"{address[0]}:{address[1]} ({why})")
    sys.stderr.write(f"dumont: no endpoint of the pair served the connection: {'; '.join(failures)}\n")
    return 255


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
