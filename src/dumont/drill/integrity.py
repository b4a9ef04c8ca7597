"""Content hashes of whole trees, and what differs between two of them: the drill's proof of integrity.

The drill reads the local cloud's host directories directly (a killed machine's disk is still there), so the
hashes are taken independently of the agent and of the controller that it checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WRITER = "writer/"


@dataclass(frozen=True)
class TreeHashes:
    """sha256 of every regular file (and the target of every symlink) under a root, by raw relative path."""

    where: str
    files: dict[str, str]

    @property
    def count(self) -> int:
        """How many entries were hashed."""
        return len(self.files)

    def without_writer(self) -> dict[str, str]:
        """The workspace's own files, without the drill writer's records."""
        return {p: h for p, h in self.files.items() if not p.startswith(WRITER)}


def _hash_tree(root: Path, where: str) -> TreeHashes:
    out: dict[str, str] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(full, base))
            if os.path.islink(full):
                out[rel] = "link:" + os.fsdecode(os.readlink(full))
                continue
            digest = hashlib.sha256()
            try:
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
            except FileNotFoundError:
                continue  # renamed or removed while the tree was walked (a writer's temporary file): not in it
            out[rel] = digest.hexdigest()
    return TreeHashes(where, out)


async def hash_tree(root: Path, where: str) -> TreeHashes:
    """Hash a tree without blocking the event loop (the controller runs in the same process)."""
    return await asyncio.to_thread(_hash_tree, root, where)


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Paths that are missing, extra, or different, as readable lines."""
    lines = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            lines.append(f"{path}: missing")
        elif path not in expected:
            lines.append(f"{path}: unexpected")
        elif expected[path] != actual[path]:
            lines.append(f"{path}: content differs")
    return lines


def missing_or_changed(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Paths of ``expected`` that ``actual`` lacks or holds with other content (extra files are fine)."""
    return [line for line in differences(expected, actual) if not line.endswith(": unexpected")]
