"""How the Vast emulator speaks HTTP: exact JSON answers, Vast's error bodies, and reading what the CLI sends."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with a Content-Type of exactly ``application/json`` (``web.json_response`` adds a charset)."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def refuse(status: int, code: str, message: str) -> web.Response:
    """Vast's usual error body: ``{"success": false, "error": code, "msg": message}``."""
    return reply({"success": False, "error": code, "msg": message}, status)


class Refused(Exception):
    """A request the emulator refuses the way Vast would (answered by :func:`refuse`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is no body); 400 invalid_args otherwise."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "invalid_args", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "invalid_args", "the body must be a JSON object")
    return data


def json_query(request: web.Request, name: str, default: Any) -> Any:
    """A query parameter holding JSON, as the CLI sends ``select_filters`` and ``order_by``."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise Refused(400, "invalid_args", f"{name} is not JSON") from None


def number(data: dict[str, Any], key: str) -> float | None:
    """``data[key]`` as a number (the CLI sends some as strings); None when absent; 400 when it is not one."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Refused(400, "invalid_args", f"{key} must be a number, not {value!r}") from None


def text(value: object) -> str | None:
    """A non-empty stripped string, or None."""
    return (value.strip() or None) if isinstance(value, str) else None
