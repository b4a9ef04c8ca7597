"""A restore's progress: the figures the status carries, and the line a person reads."""

from __future__ import annotations

from typing import Any

MB = 1024 * 1024


def describe_progress(progress: dict[str, Any]) -> str:
    """A restore's progress for people: ``412.0 of 1,190.0 MB, 180.2 MB/s, 4 s left``."""
    eta = progress.get("eta_seconds")
    left = f", {eta:.0f} s left" if isinstance(eta, (int, float)) else ""
    return (f"{progress['bytes_done'] / MB:,.1f} of {progress['bytes_total'] / MB:,.1f} MB, "
            f"{progress['mb_per_second']} MB/s{left}")


def restore_progress(done: int, total: int, elapsed: float) -> dict[str, Any]:
    """Bytes copied of the total, the rate so far and the time left at that rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    return {"bytes_done": done, "bytes_total": total, "mb_per_second": round(rate / MB, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None}
