"""How a setting is written: the rules that check a raw TOML value and turn it into a typed one.

Each rule (``_Rule``) says what is expected, in words used in problems ("a number of seconds greater than
0"), and converts the raw value or raises ``_BadValueError``. ``_when`` builds one from a predicate;
``_number``, ``_whole`` and ``_choice`` from limits or a ``Literal``. The constants at the end are the rules
the schema's fields use.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, get_args
from urllib.parse import urlsplit

REGION_NAMES: Final = frozenset({"EU", "NA", "AS", "SA", "OC", "AF"})
"""Region names accepted in ``gpu_preferred_regions``; any other entry is an ISO country code."""

ALL_EVENTS: Final = "*"
"""The ``notifications.events`` entry that means every event."""


# --- Showing values in problems -------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return repr(value)


def _show_example(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _show(value)


# --- Rules: what a value must look like, and how the raw TOML value becomes a typed one -----------------


class _BadValueError(Exception):
    """A value does not have the expected form; ``reason``, when set, replaces the generic "must be ..."."""

    def __init__(self, reason: str | None = None, *, shown: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.shown = shown  # what to show instead of the value (one that holds a secret)


@dataclass(frozen=True)
class _Rule:
    """How one setting is written: what is expected, and how a raw value becomes a typed one."""

    expected: str
    convert: Callable[[Any, Path], Any]  # (raw value, the config file's folder) -> value, or _BadValueError
    show_example: bool = True


def _when(expected: str, is_valid: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda raw: raw,
          *, show_example: bool = True) -> _Rule:
    def checked(raw: Any, _base_dir: Path) -> Any:
        if not is_valid(raw):
            raise _BadValueError
        return convert(raw)

    return _Rule(expected, checked, show_example)


def _is_number(raw: Any) -> bool:
    # bool is an int in Python, but `true` is never a number of seconds.
    return isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)


def _is_whole(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _number(what: str, *, above: float | None = None, at_least: float | None = None,
            below: float | None = None, at_most: float | None = None) -> _Rule:
    limits = [(above, "greater than", float.__gt__), (at_least, "at least", float.__ge__),
              (below, "less than", float.__lt__), (at_most, "at most", float.__le__)]
    given = [(float(bound), words, holds) for bound, words, holds in limits if bound is not None]
    expected = f"{what} " + " and ".join(f"{words} {_show_example(bound)}" for bound, words, _ in given)
    return _when(expected, lambda raw: _is_number(raw) and all(holds(float(raw), b) for b, _, holds in given),
                 float)


# No setting means anything beyond these; a larger value is a typo (hostile-review.md #17: 1e308 was accepted).
MAX_WHOLE: Final = 1_000_000
MAX_SECONDS: Final = 7 * 24 * 3600


def _whole(what: str, *, at_least: int, at_most: int = MAX_WHOLE) -> _Rule:
    return _when(f"{what} from {at_least} to {at_most}",
                 lambda raw: _is_whole(raw) and at_least <= raw <= at_most)


def _choice(options_type: object) -> _Rule:
    options = get_args(options_type)
    return _when("one of " + ", ".join(map(repr, options)), lambda raw: raw in options, show_example=False)


def _is_text(raw: Any) -> bool:
    return isinstance(raw, str) and raw.strip() != ""


def _is_list_of(is_item: Callable[[Any], bool], raw: Any) -> bool:
    return isinstance(raw, list) and all(is_item(item) for item in raw)


def split_host_port(address: str) -> tuple[str, int]:
    """Split a "host:port" address (``[::1]:22`` for IPv6); raise ValueError when it is not one."""
    host, colon, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host.strip() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port_text)


def _is_address(raw: Any) -> bool:
    try:
        split_host_port(raw)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _is_web_url(raw: Any) -> bool:
    if not isinstance(raw, str):
        return False
    parts = urlsplit(raw)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_region(item: Any) -> bool:
    # Country codes and region names are both two capital letters; the Vast provider tells them apart.
    return isinstance(item, str) and re.fullmatch(r"[A-Z]{2}", item) is not None


def _is_regions(raw: Any) -> bool:
    return _is_list_of(_is_region, raw) and len(raw) > 0 and len(set(raw)) == len(raw)


def _is_workspace(raw: Any) -> bool:
    # "/" would make every replication pass mirror (and delete) a whole machine.
    path = PurePosixPath(raw) if isinstance(raw, str) else PurePosixPath()
    return path.is_absolute() and path.name != "" and ".." not in path.parts


def _is_cidr(item: Any) -> bool:
    try:
        ipaddress.ip_network(item, strict=True)
    except (TypeError, ValueError):
        return False
    return isinstance(item, str)


def _local_path(raw: Any, base_dir: Path) -> Path:
    if not _is_text(raw) or "\0" in raw:
        raise _BadValueError
    return base_dir / Path(raw).expanduser()


def _secret_file(raw: Any, base_dir: Path) -> Path:
    path = _local_path(raw, base_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise _BadValueError(f"no such file ({path})") from None
    except OSError as exc:
        raise _BadValueError(f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise _BadValueError(f"is not a regular file ({path})")
    if mode & 0o077:
        raise _BadValueError(f"has mode {stat.S_IMODE(mode):04o}; run chmod 600 {shlex.quote(str(path))}")
    return path


def _store_url(raw: Any, _base_dir: Path) -> str:
    """``sqlite:///ABSOLUTE/PATH`` or ``postgresql://USER@HOST[:PORT]/DB``, never with a password in it."""
    if not isinstance(raw, str):
        raise _BadValueError
    if raw == "":
        return raw
    url = urlsplit(raw)
    if url.password is not None:
        redacted = raw.replace(f":{url.password}@", ":***@", 1)
        raise _BadValueError("holds a password: put it in the environment (DUMONT_STORE_PASSWORD) or in a file "
                             "only you can read (store.password_file), never in the config", shown=repr(redacted))
    if url.scheme == "sqlite" and url.netloc == "" and url.path.startswith("/") and len(url.path) > 1:
        return raw
    if url.scheme in ("postgresql", "postgres") and url.username and url.hostname and url.path.strip("/"):
        try:
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise _BadValueError from None
        return raw
    raise _BadValueError


_PAIR_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_SECONDS = _number("a number of seconds", above=0, at_most=MAX_SECONDS)
_FLAG = _when("true or false", lambda raw: isinstance(raw, bool), show_example=False)
_TEXT = _when("a non-empty string", _is_text)
_ADDRESS = _when('a "host:port" address with a port from 1 to 65535', _is_address)
_ADDRESSES = _when('a list of "host:port" addresses', functools.partial(_is_list_of, _is_address), tuple)
_WEB_URL = _when("an http:// or https:// URL", _is_web_url)
_HOST_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")  # a name or an IP literal only


def _is_host(raw: Any) -> bool:
    return isinstance(raw, str) and _HOST_NAME_PATTERN.fullmatch(raw) is not None


_HOST = _when("a host name or an IP address", _is_host)
_HOSTS = _when("a list, without repeats, of host names or IP addresses",
               lambda raw: _is_list_of(_is_host, raw) and len(set(raw)) == len(raw), tuple)
_REGIONS = _when("a non-empty list, without repeats and in order of preference, of 2-letter country codes"
                 " or region names (" + ", ".join(sorted(REGION_NAMES)) + ")", _is_regions, tuple)
_EVENTS = _when(f'a list of event names ("{ALL_EVENTS}" for every event)',
                functools.partial(_is_list_of, _is_text), tuple)
_PAIR_NAME = _when("1 to 40 lowercase letters, digits and dashes, starting with a letter or digit",
                   lambda raw: isinstance(raw, str) and _PAIR_NAME_PATTERN.fullmatch(raw) is not None)
# The agent finds the workspace from the host itself ($DUMONT_WORKSPACE, else /workspace: Vast's images and the
# hosts Dumont readies all use it); honouring another path is not built yet, so it is refused, not ignored.
_WORKSPACE = _when('"/workspace" (another workspace path is not supported yet; move or link the data there)',
                   lambda raw: raw == "/workspace" and _is_workspace(raw), show_example=False)
_LOGIN = _when("a user name other than root (lowercase letters, digits, '_' and '-', starting with a letter)",
               lambda raw: isinstance(raw, str) and raw != "root"
               and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", raw) is not None)
_NETWORK_TAG = _when("a GCP network tag (1 to 63 lowercase letters, digits and dashes, starting with a letter)",
                     lambda raw: isinstance(raw, str) and re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", raw)
                     is not None)
_CIDRS = _when('a non-empty list of address ranges like "203.0.113.0/24"',
               lambda raw: _is_list_of(_is_cidr, raw) and len(raw) > 0, tuple)
def _is_provider(role: str | None, raw: Any) -> bool:
    from dumont.providers.registry import plugins

    return isinstance(raw, str) and any(p.name == raw for p in plugins(role))  # type: ignore[arg-type]


def _provider_rule(role: str | None, what: str) -> _Rule:
    from dumont.providers.registry import plugins

    names = ", ".join(repr(p.name) for p in plugins(role))  # type: ignore[arg-type]
    return _when(f"{what} ({names})", functools.partial(_is_provider, role))


def _providers_rule(role: str, what: str) -> _Rule:
    from dumont.providers.registry import plugins

    names = ", ".join(repr(p.name) for p in plugins(role))  # type: ignore[arg-type]
    return _when(f"a non-empty list, without repeats, of {what} ({names})",
                 lambda raw: isinstance(raw, list) and len(raw) > 0 and len(set(map(str, raw))) == len(raw)
                 and all(_is_provider(role, item) for item in raw), tuple)


_LOCAL_PATH = _Rule("a path (~ and paths relative to the config file's folder work)", _local_path)
_SECRET_FILE = _Rule("the path of a file only you can read (mode 0600)", _secret_file)
_STORE_URL = _Rule('"sqlite:///ABSOLUTE/PATH" or "postgresql://USER@HOST:PORT/DB" ("" for the SQLite file in '
                   "state_dir)", _store_url)
