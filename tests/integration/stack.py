"""The in-process stack for integration tests (the drill's stack), with a leak check on teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dumont.drill.stack import Stack, build_stack, tear_down
from dumont.localcloud.link import LinkSpec

__all__ = ["Stack", "build_stack", "running_stack"]


async def running_stack(root: Path, overrides: dict[str, Any] | None = None, *,
                        link: LinkSpec | None = None) -> AsyncIterator[Stack]:
    """A stack with its controller running (``link``: every host behind one); torn down completely afterwards, with
    a leak check."""
    stack = await build_stack(root, overrides, link=link)
    try:
        await stack.start_controller()
        yield stack
    finally:
        leftovers = await tear_down(stack)
        assert not leftovers, f"processes of the local cloud survived teardown: {sorted(leftovers)}"
