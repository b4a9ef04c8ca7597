"""One request to the endpoint process over its control socket, with a deadline and our errors."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from dumont.endpoint.protocol import MAX_ANSWER, Message, decode, encode
from dumont.errors import DumontError, EndpointError, EndpointUnavailable, StaleRouteRefused

DEFAULT_TIMEOUT = 5.0


async def request(socket_path: Path, message: Message, *, timeout: float = DEFAULT_TIMEOUT, what: str) -> Message:
    """Send ``message`` and return the answer.

    ``what`` names the caller's subject (``endpoint train``) in errors.

    :raises EndpointUnavailable: nothing answers on ``socket_path`` within ``timeout`` seconds (RETRY).
    :raises StaleRouteRefused: the endpoint serves a newer epoch than the route sent.
    :raises EndpointError: the endpoint answered with any other error; its sentence and hint are kept.
    """
    try:
        async with asyncio.timeout(timeout):
            line = await _exchange(socket_path, message)
    except TimeoutError:
        raise EndpointUnavailable(
            f"{what}: the endpoint process did not answer {message.get('op')!r} on {socket_path} within {timeout:g} s",
            hint="it may be stuck; see `dumont endpoint status` and its log, or restart it",
        ) from None
    except OSError as exc:
        raise EndpointUnavailable(
            f"{what}: no endpoint process answers on {socket_path} ({exc.strerror or exc})",
            hint=f"start one with: dumont endpoint serve --dir {socket_path.parent}",
        ) from exc
    except ValueError as exc:  # an answer longer than MAX_ANSWER
        raise EndpointError(f"{what}: the endpoint's answer on {socket_path} is too long: {exc}") from exc
    if not line:
        raise EndpointUnavailable(f"{what}: the endpoint process closed {socket_path} without answering",
                                  hint="it may be shutting down; try again")
    try:
        answer = decode(line)
    except DumontError as exc:
        raise EndpointError(f"{what}: the endpoint's answer on {socket_path} is not a JSON object") from exc
    if answer.get("ok") is not True:
        error = StaleRouteRefused if answer.get("kind") == StaleRouteRefused.__name__ else EndpointError
        hint = answer.get("hint")
        raise error(str(answer.get("error", "no reason given")), hint=str(hint) if hint else None)
    return answer


async def _exchange(socket_path: Path, message: Message) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=MAX_ANSWER)
    try:
        writer.write(encode(message))
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
