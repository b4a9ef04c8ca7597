"""rsync as we run it: an explicit list of paths, archive mode, hard links, sparse files, deadlines, stats.

Paths always travel NUL-separated on stdin (``--files-from=- --from0``), so names with spaces, newlines, leading
dashes or bytes that are not UTF-8 are never parsed by a shell. Every listed path is known to differ, so rsync's
quick check (size and mtime, compared only to the second for a basis in ``--link-dest``) is switched off with
``--ignore-times``: it would otherwise keep an old version of a file rewritten within the same second.

Exit codes 23 and 24 (some files could not be copied, or vanished) are not failures here: every pass is judged
by verifying what arrived, not by rsync's word.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dumont.agent.cleanchan import RSYNC_PATH
from dumont.errors import TransportError
from dumont.transport.ssh import CommandResult, run_local

PARTIAL_OK = frozenset({0, 23, 24})
_STAT = re.compile(r"^(Total bytes sent|Total bytes received|Literal data|Matched data|"
                   r"Number of regular files transferred): ([\d,.]+)", re.MULTILINE)


@dataclass(frozen=True)
class RsyncStats:
    """What one rsync run reported with ``--stats``."""

    bytes_sent: int = 0
    bytes_received: int = 0
    literal_bytes: int = 0
    matched_bytes: int = 0
    files_transferred: int = 0


def parse_stats(text: str) -> RsyncStats:
    """Read the ``--stats`` block (numbers may carry thousands separators)."""
    found = {name: int(value.replace(",", "").split(".")[0]) for name, value in _STAT.findall(text)}
    return RsyncStats(
        bytes_sent=found.get("Total bytes sent", 0),
        bytes_received=found.get("Total bytes received", 0),
        literal_bytes=found.get("Literal data", 0),
        matched_bytes=found.get("Matched data", 0),
        files_transferred=found.get("Number of regular files transferred", 0),
    )


def rsync_argv(
    *, rsh: str, io_timeout: int, link_dest: str | None = None, bwlimit: int | None = None, compress: bool = False
) -> list[str]:
    """The rsync options every pass uses (``compress``: for sparse files); callers append source and destination."""
    argv = ["rsync", "-aHS", "--numeric-ids", "--ignore-times", "--files-from=-", "--from0", "--stats",
            f"--timeout={io_timeout}", *clean_channel(rsh)]
    if link_dest:
        argv.append(f"--link-dest={link_dest}")
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    if compress:
        argv.append("-z")
    return argv


def clean_channel(rsh: str) -> list[str]:
    """``-e`` and ``--rsync-path`` that keep a chatty remote login (a ``.bashrc`` that prints) out of the protocol.

    The remote side prints :data:`~dumont.agent.cleanchan.MARK` before it becomes rsync; the local relay
    (``python -m dumont.agent clean-ssh``) drops everything up to it.
    """
    return ["-e", f"'{sys.executable}' -m dumont.agent clean-ssh {rsh}", f"--rsync-path={RSYNC_PATH}"]


def path_list(paths: Sequence[str]) -> bytes:
    """NUL-separated raw path bytes for ``--files-from=- --from0``."""
    return b"".join(os.fsencode(p) + b"\0" for p in paths)


async def run_rsync(argv: Sequence[str], paths: Sequence[str], *, timeout: float, what: str) -> CommandResult:
    """Run a local rsync over ``paths``; raise :class:`TransportError` unless it exited 0, 23 or 24."""
    result = await run_local(argv, input=path_list(paths), timeout=timeout, what=what)
    check_exit(result.returncode, result.stderr.decode(errors="replace"), what)
    return result


def check_exit(returncode: int, stderr: str, what: str) -> None:
    """Raise when an rsync exit code means the transfer as a whole failed."""
    if returncode not in PARTIAL_OK:
        tail = stderr.strip()[-600:] or "no message"
        raise TransportError(f"{what} failed (rsync exit {returncode}): {tail}", hint="the pass will be retried")
