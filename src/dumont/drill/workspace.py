"""The drill's workspace: a small quick one by default, or the seed's 1.2 GB one (``--size 1.2G``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dumont.errors import UsageError

MB = 1024 * 1024
SEED_BYTES = int(1.2 * 1000**3)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGkmg]?)[Bb]?$")


def parse_size(text: str) -> int:
    """``1.2G``, ``300M``, ``512K`` or plain bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"--size {text!r} is not a size", hint="use e.g. 64M, 1.2G or a number of bytes")
    value, unit = float(match.group(1)), match.group(2).upper()
    return int(value * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}[unit])


def build_workspace(ws: Path, *, size_bytes: int, files: int) -> dict[str, int]:
    """Write the workspace: ``model.pt`` (random, 79% of the size), ``data.csv`` (20%), ``config.json``, and
    ``files`` small source files; the shape of the seed's 950 MB + 240 MB + 2 KB workspace."""
    ws.mkdir(parents=True, exist_ok=True)
    model_bytes = size_bytes * 950 // 1190
    csv_bytes = size_bytes * 240 // 1190
    _write_random(ws / "model.pt", model_bytes)
    _write_csv(ws / "data.csv", csv_bytes)
    (ws / "config.json").write_text(json.dumps({"model": "resnet50", "lr": 3e-4, "batch_size": 64, "epochs": 90,
                                                "dataset": "data.csv"}, indent=2) + "\n")
    src = ws / "src"
    src.mkdir(exist_ok=True)
    for i in range(files):
        (src / f"module_{i:04d}.py").write_text(f"# module {i}\nVALUE = {i}\n\n\ndef run() -> int:\n    return VALUE\n")
    return {"model_bytes": model_bytes, "csv_bytes": csv_bytes, "files": files + 3}


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            chunk = min(left, 8 * MB)
            handle.write(os.urandom(chunk))
            left -= chunk


def _write_csv(path: Path, size: int) -> None:
    line = b"1234567,0.123456789,0.987654321,category_a,2025-12-19T00:00:00Z\n"
    block = line * max(1, MB // len(line))
    with open(path, "wb") as handle:
        handle.write(b"id,x,y,label,ts\n")
        written = 0
        while written + len(block) <= size:
            handle.write(block)
            written += len(block)
        handle.write(line * max(0, (size - written) // len(line)))
