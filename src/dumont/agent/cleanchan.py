"""A clean byte channel through a chatty login: ssh, with everything the remote shell prints first thrown away.

OpenSSH runs every remote command through the user's shell, and Debian's bash reads ``~/.bashrc`` even for
``ssh host cmd``: one ``echo`` there ends up in front of rsync's protocol and breaks it ("protocol version
mismatch -- is your shell clean?"). Dumont does not ask people to clean their shells. The remote side prints
:data:`MARK` on a line of its own just before it becomes rsync (the pair key's forced command does, and relay mode
passes ``--rsync-path``); this side runs ssh, drops what comes before the mark, and then relays bytes both ways
unchanged. Used as rsync's ``-e``: ``python agent.pyz clean-ssh ssh -F config -T`` (stdlib only, Python >= 3.8).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import sys

MARK = b"DUMONT-CHANNEL-OPEN\n"
NOISE_LIMIT = 256 * 1024  # what a remote login may print before the mark
CHUNK = 1 << 20
RSYNC_PATH = "printf 'DUMONT-CHANNEL-OPEN\\n'; exec rsync"  # relay mode's --rsync-path


def _read(fd: int, size: int) -> bytes:
    """Read up to ``size`` bytes, waiting when ``fd`` is non-blocking (rsync may hand us such a descriptor)."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            select.select([fd], [], [])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _pump(source: int, target: int) -> None:
    """Copy bytes from ``source`` to ``target`` until end of file, then close ``target``.

    A non-blocking descriptor's EAGAIN is waited out, never taken for the end: ending the copy then would leave
    rsync waiting for ever on a channel nobody feeds.
    """
    try:
        while True:
            data = _read(source, CHUNK)
            if not data:
                break
            _write_all(target, data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(target)


def _skip_to_mark(fd: int) -> bytes:
    """Read ``fd`` one byte at a time up to and including the mark; return what came before it."""
    seen = bytearray()
    line = bytearray()
    while len(seen) < NOISE_LIMIT:
        byte = _read(fd, 1)
        if not byte:
            raise EOFError(bytes(seen))
        line += byte
        if byte == b"\n":
            if bytes(line) == MARK:
                return bytes(seen)
            seen += line
            line.clear()
    raise EOFError(bytes(seen))


def _splice_pump(source: int, target: int) -> None:
    """:func:`_pump` without copying through this process where the kernel can move the bytes (Linux splice,
    Python >= 3.10; one end must be a pipe, as ssh's stdout is)."""
    splice = getattr(os, "splice", None)
    if splice is None:
        _pump(source, target)
        return
    try:
        while True:
            try:
                moved = splice(source, target, CHUNK)
            except BlockingIOError:  # nothing to read yet, or no room to write: wait for both
                select.select([source], [], [])
                select.select([], [target], [])
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS):  # this pair of descriptors cannot splice
                    _pump(source, target)
                    return
                raise
            if not moved:
                break
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(target)


def main(argv: list[str]) -> int:
    """Run ``argv`` (an ssh command line) with a clean stdout; return its exit status.

    Only what ssh prints needs cleaning: what rsync sends (the bulk of a push) goes to ssh's stdin untouched, as
    this process's own stdin, and what comes back after the mark is spliced through.
    """
    proc = subprocess.Popen(argv, stdin=sys.stdin.fileno(), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        _skip_to_mark(proc.stdout.fileno())
    except EOFError as exc:
        shown = exc.args[0][-400:].decode(errors="replace") if exc.args else ""
        sys.stderr.write("dumont: the remote side never opened the channel"
                         + (f"; it printed: {shown!r}" if shown else "") + "\n")
        proc.wait()
        return proc.returncode or 12
    _splice_pump(proc.stdout.fileno(), os.dup(sys.stdout.fileno()))
    return proc.wait()
