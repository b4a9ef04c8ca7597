"""Benchmark: how fast one SSH stream moves bytes from the primary to the standby, per cipher, on real hosts.

The pair stream (the primary's push into the standby) picks its cipher with ``agent.pairing.stream_ciphers``:
AES-GCM first where the CPU has AES instructions, ChaCha20-Poly1305 (OpenSSH's default) first elsewhere. This
measures each cipher on the sync bench's two hosts: ``head -c SIZE /dev/zero | ssh -c CIPHER standby 'cat >
/dev/null'`` run on the primary, medians of ``--runs``. Exit 1 if the cipher the agent picks here is not the fastest
one measured (within 5 %, the noise of a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from dumont.agent.pairing import stream_ciphers
from dumont.transport.ssh import run_local
from sync_cycle import MB, Bench, bench_hosts

CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr")
NOISE = 0.05


async def one(bench: Bench, cipher: str, size: int) -> float:
    """Seconds for ``size`` bytes through one stream with ``cipher``."""
    remote = bench.baseline_argv[-1]
    ssh = remote[remote.index("-e '") + 4: remote.index("' ")]
    command = f"head -c {size} /dev/zero | {ssh} -c {cipher} {bench.cpu.user}@127.0.0.1 'cat > /dev/null'"
    started = time.perf_counter()
    result = await run_local([*bench.baseline_argv[:-1], command], timeout=600, what=f"a stream with {cipher}")
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return time.perf_counter() - started


async def run(size: int, runs: int) -> dict[str, float]:
    """Median MB/s of each cipher, the ciphers interleaved run by run."""
    async with bench_hosts(Bench) as bench:
        seconds: dict[str, list[float]] = {cipher: [] for cipher in CIPHERS}
        for _ in range(runs):
            for cipher in CIPHERS:
                seconds[cipher].append(await one(bench, cipher, size))
        return {cipher: round(size / MB / statistics.median(times), 1) for cipher, times in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="MB per stream (default 1024).")
    parser.add_argument("--runs", type=int, default=3, help="Runs per cipher (default 3).")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/ciphers.json"))
    args = parser.parse_args()
    rates = asyncio.run(run(args.mb * MB, args.runs))
    picked = stream_ciphers().split(",")[0]
    best = max(rates, key=lambda c: rates[c])
    print(f"{'cipher':<32}{'MB/s':>8}")
    for cipher, rate in rates.items():
        print(f"{cipher:<32}{rate:>8.1f}{'  <- the agent picks it here' if cipher == picked else ''}")
    ok = rates[picked] >= (1 - NOISE) * rates[best]
    print(f"{'PASS' if ok else 'FAIL'}  the agent's pick ({picked}) is the fastest here, within {NOISE:.0%}"
          f" (fastest: {best})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"mb_s": rates, "picked": picked, "fastest": best, "ok": ok,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
