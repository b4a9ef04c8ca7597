"""Direct mode's push: rsync the listed workspace paths into the standby's staging area with the pair key.

``push`` answers when the copy is over. ``push_start`` answers at once with an id, and ``push_poll`` waits a
moment for that push and says how many bytes it has moved so far (rsync's ``--info=progress2``), so the
controller can show a restore's progress while the agent channel stays free. A push may run in several rsyncs
at once (``streams``), split by size, each on a connection of its own.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import threading
import time
from typing import Any

from .common import Failure, Json, data_dir
from .common import workspace_dir as workspace
from .pairing import RUNNING, clean_shell

PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")  # "  1,234,567  45%  12.34MB/s  0:00:10 (xfr#1, to-chk=0/3)"
POLL_LIMIT_SECONDS = 30.0


def push(args: Json) -> Json:
    """Run a push to its end and answer with rsync's exit status, statistics and errors."""
    return _Push(args).run()


_PUSHES: dict[str, _Push] = {}


def push_start(args: Json) -> Json:
    """Start a push in the background; ``push_poll`` follows it."""
    job = _Push(args)
    push_id = secrets.token_hex(8)
    _PUSHES[push_id] = job
    threading.Thread(target=job.run, daemon=True).start()
    return {"id": push_id}


def push_poll(args: Json) -> Json:
    """Wait up to ``wait`` seconds for push ``id``: its answer once done (then forgotten), else the bytes so far."""
    job = _PUSHES.get(str(args["id"]))
    if job is None:
        raise Failure("NotFound", f"no push {args['id']!r} is running on this host (the agent restarted?)")
    job.done.wait(min(float(args.get("wait", 1.0)), POLL_LIMIT_SECONDS))
    if not job.done.is_set():
        return {"done": False, "bytes": job.moved()}
    del _PUSHES[str(args["id"])]
    if job.failure is not None:
        raise job.failure
    return {"done": True, "bytes": job.moved(), **(job.answer or {})}


class _Push:
    """One push: its rsyncs, what they moved so far, and their answer."""

    def __init__(self, args: Json) -> None:
        config = os.path.join(data_dir(), "pair", "ssh_config")
        if not os.path.exists(config):
            raise Failure("NotPaired", "this host has no pair key; the controller must install it first")
        # --ignore-times: every listed path is known to differ; rsync's quick check only compares whole seconds.
        options = ["-aHS", "--numeric-ids", "--ignore-times", "--files-from=-", "--from0", "--stats",
                   "--info=progress2", f"--timeout={int(args.get('io_timeout', 60))}"]
        if args.get("bwlimit"):
            options.append(f"--bwlimit={int(args['bwlimit'])}")
        if args.get("compress"):
            options.append("-z")  # sparse files: their holes are read as zeros, which compress to nothing
        shell = f"{clean_shell()} ssh -F '{config}' -T"
        ends = [workspace() + "/", "dumont-standby:incoming/"]
        groups = split_by_size(args["paths"], max(1, int(args.get("streams", 1))), workspace())
        # Further streams each open a connection of their own: the shared master would put them all on one cipher.
        self.runs = [(["rsync", *options, "-e", shell if n == 0 else shell + " -o ControlMaster=no -o ControlPath=none",
                       *ends], group) for n, group in enumerate(groups)]
        self.timeout = float(args.get("timeout", 3600))
        self.progress = [0] * len(self.runs)
        self.done = threading.Event()
        self.answer: Json | None = None
        self.failure: Failure | None = None

    def moved(self) -> int:
        """Bytes the rsyncs have moved so far, as they report it."""
        return sum(self.progress)

    def run(self) -> Json:
        """Run every rsync at once; the answer is the first failure's, else their summed statistics."""
        try:
            self.answer = self._run()
            return self.answer
        except Failure as failure:
            self.failure = failure
            raise
        finally:
            self.done.set()

    def _run(self) -> Json:
        started = time.time()
        deadline = time.monotonic() + self.timeout
        procs = []
        for argv, paths in self.runs:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            RUNNING.append(proc)
            procs.append((proc, b"".join(os.fsencode(p) + b"\0" for p in paths)))
        results: list[tuple[int, str, str] | None] = [None] * len(procs)
        try:
            threads = [threading.Thread(target=self._follow, args=(n, proc, listing, results))
                       for n, (proc, listing) in enumerate(procs)]
            for thread in threads:
                thread.start()
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), _kill_all, args=([p for p, _ in procs],))
            timer.daemon = True
            timer.start()
            for thread in threads:
                thread.join()
            timer.cancel()
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                RUNNING.remove(proc)
        if time.monotonic() >= deadline:
            raise Failure("CommandTimeout", f"rsync did not finish within {self.timeout:g} s")
        finished = [r for r in results if r is not None]
        failed = [r for r in finished if r[0] != 0]
        code, out, err = failed[0] if failed else (0, "\n".join(r[1] for r in finished), "")
        return {"returncode": code, "stdout": out if failed else summed_stats(out, len(finished)),
                "stderr": err[-4000:], "seconds": time.time() - started}

    def _follow(self, n: int, proc: subprocess.Popen, listing: bytes,  # type: ignore[type-arg]
                results: list[tuple[int, str, str] | None]) -> None:
        """Feed one rsync its list, keep its progress, collect what it said."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        feeder = threading.Thread(target=_feed, args=(proc.stdin, listing), daemon=True)
        feeder.start()
        kept, pending = [], b""
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                found = PROGRESS.match(line)
                if found:
                    self.progress[n] = int(found.group(1).replace(b",", b""))
                elif line.strip():
                    kept.append(line)
        kept.append(pending)
        proc.wait()
        reader.join()
        feeder.join()
        text = b"\n".join(kept).decode(errors="replace")
        results[n] = (proc.returncode, text, b"".join(errors).decode(errors="replace"))


def _feed(stdin: Any, listing: bytes) -> None:
    try:
        stdin.write(listing)
        stdin.close()
    except OSError:
        pass  # rsync died early: its exit status says why


def _kill_all(procs: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


def split_by_size(paths: list[str], streams: int, root: str) -> list[list[str]]:
    """``paths`` in at most ``streams`` groups of about equal bytes (largest files first, each to the lightest
    group); directories, links and what cannot be sized go with the first group. A hard-link group stays in one
    group. Each group keeps the listed order."""
    if streams <= 1 or len(paths) < 2:
        return [list(paths)]
    broot = os.fsencode(root)
    units: dict[Any, list[str]] = {}  # what must travel together: a file, or every name of a hard-linked one
    sizes: dict[Any, int] = {}
    for name in paths:
        try:
            st = os.lstat(os.path.join(broot, os.fsencode(name)))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else name
            units.setdefault(key, []).append(name)
            sizes[key] = st.st_size
    loads = [0] * streams
    groups: list[set[str]] = [set() for _ in range(streams)]
    for key in sorted(units, key=lambda k: -sizes[k]):
        lightest = loads.index(min(loads))
        groups[lightest].update(units[key])
        loads[lightest] += sizes[key]
    placed = set().union(*groups)
    groups[0].update(p for p in paths if p not in placed)
    return [[p for p in paths if p in group] for group in groups if group]


def summed_stats(text: str, count: int) -> str:
    """Several rsync ``--stats`` outputs as one: each numeric line summed (one run's text is left as it is)."""
    if count == 1:
        return text
    totals: dict[str, int] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(": ")
        number = value.split(" ")[0].replace(",", "")
        if sep and number.isdigit():
            totals[label] = totals.get(label, 0) + int(number)
    return "\n".join(f"{label}: {value}" for label, value in totals.items()) + "\n"
