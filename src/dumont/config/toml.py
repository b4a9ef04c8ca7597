"""Writing a config back: as plain, JSON-ready data, and as TOML that ``tomllib`` reads back unchanged."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import PurePath
from typing import Any, Final, cast

from dumont.config.schema import Config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as JSON-ready data: paths as strings, tuples as lists, unset values as None, no secrets."""
    data = cast(dict[str, Any], _plain(config))
    data.update(data.pop("provider_tables", {}))  # each plug-in's table under its own name, as in the file
    return data


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {spec.name: _plain(getattr(value, spec.name)) for spec in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def to_toml(data: Mapping[str, Any]) -> str:
    """Write ``data`` as TOML that ``tomllib`` reads back unchanged (None values are left out)."""
    lines: list[str] = []
    _write_table(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(table: Mapping[str, Any], header: tuple[str, ...], lines: list[str]) -> None:
    nested = {key: value for key, value in table.items() if _is_table(value) or _is_table_array(value)}
    lines += [f"{_toml_key(key)} = {_toml_value(value)}"
              for key, value in table.items() if value is not None and key not in nested]
    for key, value in nested.items():
        path = (*header, key)
        for item in [value] if _is_table(value) else value:
            lines += ["", f"[{_dotted(path)}]" if _is_table(value) else f"[[{_dotted(path)}]]"]
            _write_table(item, path, lines)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and all(_is_table(item) for item in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_toml_key(key) for key in path)


def _toml_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, not {key!r}")
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple) and not any(_is_table(item) for item in value):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


_TOML_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                        "\r": "\\r"}


def _toml_string(text: str) -> str:
    def escaped(char: str) -> str:
        if char in _TOML_ESCAPES:
            return _TOML_ESCAPES[char]
        return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char

    return '"' + "".join(map(escaped, text)) + '"'
