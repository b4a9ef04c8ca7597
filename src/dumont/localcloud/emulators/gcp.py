"""Placeholder until the gcp emulator lands (being written in its own issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dumont.errors import UsageError

if TYPE_CHECKING:
    from dumont.localcloud.daemon import LocalCloud
    from dumont.localcloud.hosts import LocalHost


class _Placeholder:
    name = "gcp"
    fault_actions: frozenset[str] = frozenset()

    async def start(self) -> str:
        return ""

    async def stop(self) -> None:
        return None

    async def fault(self, action: str, host: LocalHost) -> dict[str, Any]:
        raise UsageError(f"{action} is not available yet")


def create(cloud: LocalCloud) -> _Placeholder:
    """The gcp emulator."""
    del cloud
    return _Placeholder()
