"""Benchmark: how soon the CLI answers, each command against a bare interpreter started in the same run.

Four commands, each run as a user runs it, in a fresh process: ``dumont --help``; ``dumont status --json``
against a real controller (``dumont run`` on the local cloud, its pair synced; with ``--no-controller``, against
a config whose controller never ran, which must fail at once with its usual message); ``dumont local hosts
--json``; and ``dumont local kill HOST`` (a fresh host each run, added beforehand). Each gets one unmeasured
warm-up, then ``--runs`` measured runs, each after a run of ``python -c pass`` in the same interpreter, so the
difference is what the command itself costs: imports, work, and its answer's round trip.

Every figure is measured here; the table shows medians. Exit 1 if ``--help`` or ``status --json`` is more than
0.5 s above the bare interpreter, or if any command did not answer as it should.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LIMIT_S = 0.5  # above a bare interpreter, for the commands a person types to look (help, status)
CONTROLLER_DEADLINE_S = 300.0
DUMONT = [sys.executable, "-m", "dumont"]
BARE = [sys.executable, "-c", "pass"]

Check = Callable[[subprocess.CompletedProcess[str]], bool]


@dataclass
class Timed:
    """One command's runs and the bare interpreter's runs interleaved with them."""

    label: str
    limited: bool
    command: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    answered: bool = True

    def row(self) -> dict[str, object]:
        """Medians, their difference, and whether it is within the limit (for the limited commands)."""
        median, bare = statistics.median(self.command), statistics.median(self.bare)
        difference = median - bare
        ok = self.answered and (difference <= LIMIT_S if self.limited else True)
        return {"command": self.label, "median_s": round(median, 4), "bare_median_s": round(bare, 4),
                "difference_s": round(difference, 4), "limited": self.limited, "answered": self.answered,
                "ok": ok, "runs": len(self.command), "all_s": [round(x, 4) for x in self.command],
                "bare_all_s": [round(x, 4) for x in self.bare]}


def timed_run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``argv`` to its end; wall seconds and its result."""
    started = time.perf_counter()
    result = subprocess.run(argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - started, result


def dumont(*args: str) -> subprocess.CompletedProcess[str]:
    """``dumont ARGS``, untimed (setting up and tearing down)."""
    return subprocess.run([*DUMONT, *args], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=180)


def measure(label: str, args: Callable[[int], list[str]], check: Check, runs: int, *, limited: bool) -> Timed:
    """One warm-up, then ``runs`` of the bare interpreter and the command in turn; run ``i`` gets ``args(i)``."""
    timed = Timed(label, limited)
    for i in range(runs + 1):
        bare_s, _ = timed_run(BARE)
        command_s, result = timed_run([*DUMONT, *args(i)])
        if not check(result):
            timed.answered = False
            print(f"{label}: unexpected answer (exit {result.returncode}): {result.stderr.strip()[-300:]}",
                  file=sys.stderr)
        if i > 0:  # run 0 is the warm-up: it fills the page cache and the bytecode cache
            timed.bare.append(bare_s)
            timed.command.append(command_s)
    return timed


def is_json(result: subprocess.CompletedProcess[str], want: Callable[[object], bool]) -> bool:
    """Exit 0 and a JSON document that ``want`` accepts."""
    if result.returncode != 0:
        return False
    try:
        return want(json.loads(result.stdout))
    except ValueError:
        return False


class LocalCloud:
    """The local cloud, started by the CLI, with (optionally) a real controller protecting its pair."""

    def __init__(self, root: Path) -> None:
        self.state_dir = root / "cloud"
        self.log = root / "controller.log"
        self.controller: subprocess.Popen[bytes] | None = None
        self.config = Path()

    def up(self) -> None:
        """``dumont local up``: the daemon, its first GPU and the ready config."""
        result = dumont("local", "up", "--state-dir", str(self.state_dir), "--json")
        if result.returncode != 0:
            raise RuntimeError(f"dumont local up failed: {result.stderr.strip()}")
        self.config = Path(json.loads(result.stdout)["config"])

    def add_hosts(self, names: list[str]) -> None:
        """Hosts for ``local kill`` to kill, one per run."""
        for name in names:
            result = dumont("local", "add", name, "--state-dir", str(self.state_dir), "--json")
            if result.returncode != 0:
                raise RuntimeError(f"dumont local add {name} failed: {result.stderr.strip()}")

    def start_controller(self) -> None:
        """``dumont run`` in the background, until its pair has a standby and a first pass (the steady state)."""
        with self.log.open("ab") as log:
            self.controller = subprocess.Popen([*DUMONT, "run", "--config", str(self.config)],
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + CONTROLLER_DEADLINE_S
        while time.monotonic() < deadline:
            if self.controller.poll() is not None:
                raise RuntimeError(f"dumont run exited with {self.controller.returncode}; see {self.log}")
            if is_json(dumont("status", "--json", "--config", str(self.config)), is_synced):
                return
            time.sleep(1)
        raise RuntimeError(f"the controller's pair was not synced within {CONTROLLER_DEADLINE_S:g} s; see {self.log}")

    def down(self) -> None:
        """Stop the controller (as Ctrl-C does) and the local cloud."""
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGINT)
            try:
                self.controller.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        if self.state_dir.exists():
            dumont("local", "down", "--state-dir", str(self.state_dir))


def is_synced(data: object) -> bool:
    """A status document whose every pair has a standby and a finished pass."""
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not pairs:
        return False
    return all(p["standby"] is not None and p["last_sync"] is not None for p in pairs)


def status_case(root: Path, cloud: LocalCloud, with_controller: bool) -> tuple[str, list[str], Check]:
    """The status command to time, and what it must answer."""
    if with_controller:
        return ("dumont status --json", ["status", "--json", "--config", str(cloud.config)],
                lambda r: is_json(r, lambda d: isinstance(d, dict) and "pairs" in d))
    config = root / "never-ran.toml"
    config.write_text(f'state_dir = "{root / "never-ran"}"\n')
    return ("dumont status --json (no controller)", ["status", "--json", "--config", str(config)],
            lambda r: r.returncode == 1 and "no controller has run with this config yet" in r.stderr)


def run(runs: int, with_controller: bool) -> list[dict[str, object]]:
    """Start the local cloud (and controller), time the four commands, tear everything down."""
    root = Path(tempfile.mkdtemp(prefix="dumont-bench-cli-"))
    cloud = LocalCloud(root)
    victims = [f"bench-kill-{i}" for i in range(runs + 1)]
    state = str(cloud.state_dir)
    try:
        print("starting the local cloud...", file=sys.stderr)
        cloud.up()
        cloud.add_hosts(victims)
        if with_controller:
            print("starting a controller and waiting for its first pass...", file=sys.stderr)
            cloud.start_controller()
        status_label, status_args, status_check = status_case(root, cloud, with_controller)
        print(f"timing, {runs} runs each after a warm-up...", file=sys.stderr)
        rows = [
            measure("dumont --help", lambda _: ["--help"], lambda r: r.returncode == 0 and "Usage" in r.stdout,
                    runs, limited=True),
            measure(status_label, lambda _: status_args, status_check, runs, limited=True),
            measure("dumont local hosts --json", lambda _: ["local", "hosts", "--json", "--state-dir", state],
                    lambda r: is_json(r, lambda d: isinstance(d, list) and len(d) > len(victims)), runs,
                    limited=False),
            measure("dumont local kill HOST", lambda i: ["local", "kill", victims[i], "--json", "--state-dir", state],
                    lambda r: is_json(r, lambda d: isinstance(d, dict) and d.get("state") == "killed"), runs,
                    limited=False),
        ]
        return [r.row() for r in rows]
    finally:
        cloud.down()
        shutil.rmtree(root, ignore_errors=True)


def print_table(rows: list[dict[str, object]]) -> None:
    """The results as an aligned text table."""
    head = f"{'command':<38}{'median s':>10}{'bare interpreter s':>20}{'difference s':>14}  ok"
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = ("yes" if r["ok"] else "NO") if r["limited"] else ("-" if r["answered"] else "NO")
        print(f"{r['command']:<38}{r['median_s']:>10.3f}{r['bare_median_s']:>20.3f}{r['difference_s']:>14.3f}  {ok}")
    print(f"ok: answered as it should and at most {LIMIT_S} s above the bare interpreter (--help and status); "
          "-: answered as it should, no limit set")


def main() -> None:
    """Entry point: ``python bench/cli.py [--runs N] [--no-controller]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="Measured runs per command (after one warm-up).")
    parser.add_argument("--no-controller", action="store_true",
                        help="Time status against a config whose controller never ran, instead of a running one.")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/cli.json"))
    args = parser.parse_args()
    rows = run(max(1, args.runs), with_controller=not args.no_controller)
    print_table(rows)
    ok = all(r["ok"] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'}  every command answered; --help and status within {LIMIT_S} s of a bare "
          "interpreter")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "ok": ok, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    print(f"results: {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
