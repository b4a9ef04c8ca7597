"""The Vast emulator's instance-to-instance copy: what ``vastai copy SRC:/path DST:/path`` asks for.

``PUT /api/v0/commands/copy_direct/`` with ``{"client_id": "me", "src_id", "dst_id", "src_path", "dst_path"}``
(the CLI's body, vastai/api/storage.py); ids are instance numbers, or ``C.<id>`` as the container form. Vast
answers at once and copies in the background ("Remote to Remote copy initiated - check instance status bar for
progress updates", the CLI); a paused (outbid or stopped) instance can be the source: "Once an instance is
paused, the data is still available on the machine to be copied" (Vast's instance-types docs, research/anchors.md
§5). The emulator copies with rsync between the two hosts' directories, so only paths under ``/workspace`` are
served (anything else is refused with 400 ``invalid_args``); progress and the outcome show in the destination's
``status_msg`` ("copy from N: done" / "copy from N failed: ..."), whose wording on Vast is not documented.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dumont.localcloud.emulators.vast_http import Refused, text

CONTAINER_WORKSPACE = PurePosixPath("/workspace")


def instance_number(raw: object, what: str) -> int:
    """An instance id as the CLI sends it: a number, or ``C.<number>``."""
    value = str(raw).strip()
    value = value[2:] if value.startswith("C.") else value
    if not value.isdigit():
        raise Refused(400, "invalid_args", f"{what} must be an instance id (12345 or C.12345), not {raw!r}")
    return int(value)


def host_path(workspace: Path, container_path: object, what: str) -> Path:
    """Where a container path under /workspace lives on the emulator's host."""
    raw = text(container_path)
    path = PurePosixPath(raw) if raw else None
    if path is None or not path.is_absolute() or ".." in path.parts:
        raise Refused(400, "invalid_args", f"{what} must be an absolute path, not {container_path!r}")
    try:
        rel = path.relative_to(CONTAINER_WORKSPACE)
    except ValueError:
        raise Refused(400, "invalid_args", f"{what} {raw!r}: the local cloud copies only under /workspace") from None
    return workspace / rel


@dataclass
class Copies:
    """Copies in flight and the last outcome per destination instance."""

    status: dict[int, str] = field(default_factory=dict)  # destination id -> what its status bar says
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, src_id: int, dst_id: int, source: Path, target: Path) -> None:
        """Copy ``source`` (a directory; a trailing slash's meaning, its contents) into ``target`` in the
        background."""
        self.status[dst_id] = f"copy from {src_id}: running"
        task = asyncio.create_task(self._copy(src_id, dst_id, source, target), name=f"vast-copy-{src_id}-{dst_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, src_id: int, dst_id: int, source: Path, target: Path) -> None:
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        contents = f"{source}/" if await asyncio.to_thread(source.is_dir) else str(source)
        proc = await asyncio.create_subprocess_exec(
            "rsync", "-a", contents, f"{target}/",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode == 0:
            self.status[dst_id] = f"copy from {src_id}: done"
        else:
            self.status[dst_id] = f"copy from {src_id} failed: {err.decode(errors='replace').strip()[-200:]}"

    async def cancel_all(self) -> None:
        """Stop every copy (the emulator is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
