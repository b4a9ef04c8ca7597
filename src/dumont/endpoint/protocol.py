"""The endpoint process's control protocol: JSON lines over ``DIR/control.sock``.

Each request is one JSON object on one line, with ``op`` naming it; each answer is one line, ``{"ok": true, ...}``
or ``{"ok": false, "error": sentence, "hint": fix, "kind": error class}``. A connection may carry any number of
requests; answers come in order. Any request may carry ``controller`` (the sender's pid) and ``expect_within``
(seconds until its next request), which count as a heartbeat of that controller. Addresses are ``[host, port]``.

==============================================================  =====================================================
request                                                         answer (besides ``ok``)
==============================================================  =====================================================
``ping``                                                        ``pid``
``serve {pair, listen: "host:port", hold_timeout}``             ``address``, ``endpoint``
``route {pair, target: [host, port] | null, reason, epoch}``    ``changed``, ``endpoint``
``hold {pair, reason}`` / ``release {pair, reason}``            ``held``, ``endpoint``
``close_existing {pair, reason}``                               ``closed`` (a count), ``endpoint``
``status {pair?}``                                              every pair (see :mod:`dumont.endpoint.server`)
``heartbeat {controller, expect_within?}``                      ``pid``
``forget {pair}``                                               ``forgotten``
``shutdown``                                                    ``pid``; then the process stops its relays and exits
==============================================================  =====================================================

``endpoint`` is the pair's entry of ``status``, as it is after the change.
"""

from __future__ import annotations

import json
from typing import Any

from dumont.endpoint.relay import RelayStats, Switch
from dumont.errors import DumontError, UsageError

Address = tuple[str, int]
Message = dict[str, Any]

# A request is a few hundred bytes; a status answer holds every pair's history (32 switches each).
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 16 * 1024 * 1024


def encode(message: Message) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """The object on one protocol line; raise UsageError when it is not one."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"a control line is not JSON: {exc}", hint="send one JSON object per line") from exc
    if not isinstance(message, dict):
        raise UsageError("a control line is not a JSON object", hint='send {"op": ...} objects, one per line')
    return message


def text_field(message: Message, name: str, *, default: str | None = None) -> str:
    """The string field ``name``; raise UsageError when it is missing (with no default) or not a string."""
    value = message.get(name, default)
    if not isinstance(value, str):
        raise UsageError(f"{_op(message)}: {name!r} must be a string, got {value!r}")
    return value


def number_field(message: Message, name: str, *, default: float | None = None) -> float:
    """The positive number field ``name``; raise UsageError when it is missing or not a positive number."""
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"{_op(message)}: {name!r} must be a positive number of seconds, got {value!r}")
    return float(value)


def flag_field(message: Message, name: str, *, default: bool = False) -> bool:
    """The boolean field ``name`` (``default`` when missing); raise UsageError when it is not a boolean."""
    value = message.get(name, default)
    if not isinstance(value, bool):
        raise UsageError(f"{_op(message)}: {name!r} must be true or false, got {value!r}")
    return value


def int_field(message: Message, name: str) -> int:
    """The non-negative integer field ``name``; raise UsageError when it is missing or not one."""
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{_op(message)}: {name!r} must be a non-negative integer, got {value!r}")
    return value


def target_field(message: Message, name: str = "target") -> Address | None:
    """The ``[host, port]`` (or null) field ``name``; raise UsageError when it is neither."""
    if name not in message:
        raise UsageError(f"{_op(message)}: {name!r} is missing", hint="send [host, port], or null to park")
    value = message[name]
    if value is None:
        return None
    address = address_from_wire(value)
    if address is None:
        raise UsageError(f"{_op(message)}: {name!r} must be [host, port] or null, got {value!r}")
    return address


def address_from_wire(value: object) -> Address | None:
    """``[host, port]`` as an address; None when ``value`` is not one."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    host, port = value
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int):
        return None
    return (host, port) if 0 < port < 65536 else None


def address_to_wire(address: Address | None) -> list[Any] | None:
    """An address as ``[host, port]`` (JSON has no tuples)."""
    return None if address is None else [address[0], address[1]]


def stats_to_wire(stats: RelayStats) -> Message:
    """Relay counters as a JSON object."""
    return {
        "active": stats.active, "parked": stats.parked, "accepted": stats.accepted,
        "failed_connects": stats.failed_connects, "timed_out": stats.timed_out, "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out, "target": address_to_wire(stats.target), "held": stats.held,
        "switched_at": stats.switched_at, "switch_reason": stats.switch_reason, "refused": stats.refused,
        "refusing": stats.refusing,
    }


def stats_from_wire(data: Message) -> RelayStats:
    """Relay counters from :func:`stats_to_wire`'s object."""
    switched_at = data.get("switched_at")
    return RelayStats(
        active=int(data["active"]), parked=int(data["parked"]), accepted=int(data["accepted"]),
        failed_connects=int(data["failed_connects"]), timed_out=int(data["timed_out"]),
        bytes_in=int(data["bytes_in"]), bytes_out=int(data["bytes_out"]),
        target=address_from_wire(data.get("target")), held=bool(data["held"]),
        switched_at=float(switched_at) if switched_at is not None else None,
        switch_reason=str(data.get("switch_reason", "")), refused=int(data.get("refused", 0)),
        refusing=str(data.get("refusing", "")),
    )


def switch_to_wire(switch: Switch) -> Message:
    """One switch as a JSON object (``at`` is ``time.monotonic()``, shared by every process on a Linux host)."""
    return {"at": switch.at, "target": address_to_wire(switch.target), "reason": switch.reason}


def switch_from_wire(data: Message) -> Switch:
    """One switch from :func:`switch_to_wire`'s object."""
    return Switch(float(data["at"]), address_from_wire(data.get("target")), str(data.get("reason", "")))


def error_answer(exc: Exception) -> Message:
    """The answer that reports ``exc``: its sentence, its hint and its class name."""
    if isinstance(exc, DumontError):
        return {"ok": False, "error": exc.message, "hint": exc.hint, "kind": type(exc).__name__}
    return {"ok": False, "error": str(exc), "hint": None, "kind": type(exc).__name__}


def _op(message: Message) -> str:
    return str(message.get("op", "request"))
