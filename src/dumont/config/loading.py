"""Loading a config: read the TOML, check it against the schema, and report every problem at once.

Loading collects every problem -- bad values, unknown keys (with the closest known key), secrets written in
the text, broken timing rules, pairs that share a name or a port -- in a ``_Reading``, then raises one
``ConfigError`` that lists them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, cast

from dumont.config.rules import _BadValueError, _show, _show_example, split_host_port
from dumont.config.schema import (
    _KNOWN_PATHS,
    _TIMING_RULES,
    Config,
    _is_required,
    _must_be,
    _setting_of,
)
from dumont.errors import ConfigError


def default_config() -> Config:
    """The config used when a file sets nothing: the seed's recommended production values."""
    return Config()


def load_config(path: Path) -> Config:
    """Read and check the config file at ``path``; raise ConfigError listing every problem found."""
    return parse_config(_read_toml(path), source=str(path), base_dir=path.absolute().parent)


def check_config_file(path: Path) -> list[str]:
    """Every problem in the config file at ``path``; an empty list when it loads cleanly."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems or [exc.message]
    return []


def parse_config(data: Mapping[str, Any], *, source: str, base_dir: Path) -> Config:
    """Check parsed TOML ``data`` from ``source`` (paths resolve against ``base_dir``); raise ConfigError."""
    reading = _Reading(source, base_dir)
    if not data:
        reading.note("the file sets nothing, so it protects no pair: add a [[pairs]] table (`dumont local up` and "
                     "`dumont init` write a whole config; `dumont config defaults` prints every setting)")
    _refuse_secrets(data, "", reading)
    data, plugin_tables = _plugin_tables(data, reading)
    config = cast(Config, _read_table(Config, data, "", reading))  # Config has no required keys
    if config is not _INVALID and plugin_tables:
        config = dataclasses.replace(config, provider_tables=plugin_tables)
    _check_timing(config, reading)
    _check_pairs(data, config, reading)
    _check_fleet_endpoints(config, reading)
    if reading.problems:
        count = len(reading.problems)
        raise ConfigError(f"{source}: {count} problem{'s' if count > 1 else ''}", reading.problems)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError as exc:
        raise _unreadable(path, "no such file") from exc
    except IsADirectoryError as exc:
        raise _unreadable(path, "is a directory, not a config file") from exc
    except OSError as exc:
        raise _unreadable(path, f"cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise _unreadable(path, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _unreadable(path, _describe_syntax_error(str(exc))) from exc


def _unreadable(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"cannot read config {path}", [f"{path}: {problem}"])


def _describe_syntax_error(message: str) -> str:
    where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if where is None:
        return f"invalid TOML: {message}"
    return f"line {where[1]}, column {where[2]}: invalid TOML: {message[:where.start()]}"


_INVALID: Final = object()


@dataclass
class _Reading:
    """What one load has found so far: the problems, and the keys whose values were refused."""

    source: str
    base_dir: Path
    problems: list[str] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)

    def note(self, text: str) -> None:
        """Record a problem."""
        self.problems.append(f"{self.source}: {text}")

    def refuse(self, path: str, value: object, reason: str, *, shown: str | None = None) -> None:
        """Record that the value at ``path`` is refused, and why (``shown``: the value as it may be shown)."""
        self.note(f"{path} = {shown or _show(value)}: {reason}")
        self.invalid.add(path)

    def is_sound(self, path: str) -> bool:
        """Whether neither the value at ``path`` nor a table holding it was refused."""
        return not any(path == bad or path.startswith((bad + ".", bad + "[")) for bad in self.invalid)


def _plugin_tables(data: Mapping[str, Any], reading: _Reading) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split off the [<name>] tables of plug-in providers, each read with its own schema."""
    from dumont.providers.registry import plugins

    tables: dict[str, Any] = {}
    rest = dict(data)
    for plugin in plugins():
        if plugin.builtin or plugin.table is None:
            continue
        raw = rest.pop(plugin.name, {})
        if not isinstance(raw, Mapping):
            reading.refuse(plugin.name, raw, f"must be a [{plugin.name}] table")
            continue
        table = _read_table(plugin.table, raw, f"{plugin.name}.", reading)
        if table is not _INVALID:
            tables[plugin.name] = table
    return rest, tables


def _read_table(cls: type[Any], raw: Mapping[str, Any], prefix: str, reading: _Reading) -> Any:
    _refuse_unknown_keys(cls, raw, prefix, reading)
    values: dict[str, Any] = {}
    complete = True
    for spec in fields(cls):
        if _setting_of(spec).internal:
            continue
        path = prefix + spec.name
        if spec.name in raw:
            value = _read_value(spec, raw[spec.name], path, reading)
        elif _is_required(spec):
            what = f"add a [{_header(path)}] table" if _setting_of(spec).table else _must_be(spec)
            reading.note(f"{path}: missing; {what}")
            value = _INVALID
        else:
            continue  # the field's default applies
        if value is not _INVALID:
            values[spec.name] = value
        elif _is_required(spec):
            complete = False
    return cls(**values) if complete else _INVALID


def _read_value(spec: Field[Any], raw: Any, path: str, reading: _Reading) -> Any:
    setting = _setting_of(spec)
    if setting.table is not None and setting.many:
        return _read_table_array(setting.table, raw, path, reading)
    if setting.table is not None:
        if not isinstance(raw, dict):
            reading.refuse(path, raw, f"must be a table ([{_header(path)}])")
            return _INVALID
        return _read_table(setting.table, raw, path + ".", reading)
    assert setting.rule is not None
    try:
        return setting.rule.convert(raw, reading.base_dir)
    except _BadValueError as exc:
        reading.refuse(path, raw, exc.reason or _must_be(spec), shown=exc.shown)
        return _INVALID


def _read_table_array(cls: type[Any], raw: Any, path: str, reading: _Reading) -> Any:
    if not isinstance(raw, list):
        reading.refuse(path, raw, f"must be an array of tables ([[{_header(path)}]])")
        return _INVALID
    items = []
    for index, item in enumerate(raw):
        item_path = f"{path}[{index}]"
        if not isinstance(item, dict):
            reading.refuse(item_path, item, f"must be a table ([[{_header(path)}]])")
            continue
        value = _read_table(cls, item, item_path + ".", reading)
        if value is not _INVALID:
            items.append(value)
    return tuple(items)


def _header(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


_SECRET_SUFFIXES: Final = ("api_key", "token", "password", "secret")
_SECRET_ENVIRONMENT: Final = {"vast.api_key": "VAST_API_KEY"}


def _is_secret_name(key: str) -> bool:
    return key.lower().endswith(_SECRET_SUFFIXES)


def _refuse_secrets(table: Mapping[str, Any], prefix: str, reading: _Reading) -> None:
    for key, value in table.items():
        path = prefix + key
        if _is_secret_name(key):
            reading.note(f"{path}: {_secret_advice(path)}")  # never the value
            reading.invalid.add(path)
        elif isinstance(value, dict):
            _refuse_secrets(value, path + ".", reading)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    _refuse_secrets(item, f"{path}[{index}].", reading)


def _secret_advice(path: str) -> str:
    advice = "secrets never go in the config text; put it in a file with mode 0600 and "
    if _header(path) + "_file" not in _KNOWN_PATHS:
        return advice + "point a *_file setting at it (e.g. vast.api_key_file)"
    variable = _SECRET_ENVIRONMENT.get(path)
    alternative = f" (or use the {variable} environment variable)" if variable else ""
    return f"{advice}set {path}_file{alternative}"


# Keys a later release will read. Until then they are refused rather than accepted and ignored.
NOT_SUPPORTED_YET: Final[dict[str, str]] = {}


def _refuse_unknown_keys(cls: type[Any], raw: Mapping[str, Any], prefix: str, reading: _Reading) -> None:
    known = [spec.name for spec in fields(cls) if not _setting_of(spec).internal]
    for key, value in raw.items():
        if prefix + key in NOT_SUPPORTED_YET:
            reading.note(f"{prefix}{key}: not supported yet ({NOT_SUPPORTED_YET[prefix + key]}); remove it")
        elif key not in known and not _is_secret_name(key):
            # Only numbers and booleans are echoed: an unknown string could be a secret under another name.
            shown = _show(value) if isinstance(value, int | float) else f"<{_kind(value)}>"
            reading.note(f"{prefix}{key} = {shown}: unknown key; {_suggest_key(key, known, prefix)}")


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {str: "a string", dict: "a table", list: "an array"}
    return kinds.get(type(value), type(value).__name__)


def _suggest_key(key: str, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    elsewhere = [path for path in _KNOWN_PATHS if path.rpartition(".")[2] == key]
    if elsewhere:
        table, _, _ = elsewhere[0].rpartition(".")
        where = f"under [{table}]" if table else "before the first [table] header"
        return f"did you mean {elsewhere[0]}? (it goes {where})"
    return "known keys here: " + ", ".join(known)


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but probably not meant: said by ``config check`` and logged by ``dumont run``."""
    warnings = []
    host, _ = split_host_port(config.controller.api_listen)
    if host in _WILDCARD_HOSTS:
        warnings.append(f"controller.api_listen = {_show(config.controller.api_listen)} listens on every "
                        f"interface: anyone who can reach this machine can try the API token; prefer "
                        f"127.0.0.1 and an SSH tunnel, unless the network in between is yours")
    return warnings


def _check_timing(config: Config, reading: _Reading) -> None:
    for rule in _TIMING_RULES:
        if not (reading.is_sound(rule.shorter) and reading.is_sound(rule.longer)):
            continue
        shorter, longer = _value_at(config, rule.shorter), _value_at(config, rule.longer)
        if shorter < longer or (rule.or_equal and shorter == longer):
            continue
        relation = "at most" if rule.or_equal else "less than"
        reading.note(f"{rule.shorter} = {_show_example(shorter)} must be {relation} "
                     f"{rule.longer} = {_show_example(longer)}: {rule.why}")


def _value_at(config: Config, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), config)


_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", "*"})  # noqa: S104 -- names, not a bind


def _check_pairs(data: Mapping[str, Any], config: Config, reading: _Reading) -> None:
    pairs = data.get("pairs")
    if not isinstance(pairs, list) or not reading.is_sound("pairs"):
        return
    names: dict[str, str] = {}
    listeners = [("controller.api_listen", config.controller.api_listen)]
    for index, pair in enumerate(pairs):
        prefix = f"pairs[{index}]"
        if not isinstance(pair, dict):
            continue
        name = _sound_value(pair, prefix, "name", reading)
        if name is not None and name in names:
            reading.note(f"{prefix}.name = {_show(name)}: already used by {names[name]}; "
                         "each pair needs its own name")
        elif name is not None:
            names[name] = prefix
        _check_listener(pair, prefix, listeners, reading)
        for role in ("primary", "standby"):
            _check_gcp_project(pair.get(role), f"{prefix}.{role}", config, reading)


def _check_fleet_endpoints(config: Config, reading: _Reading) -> None:
    keys = ("controller.endpoint_hosts", "controller.endpoint_bind", "controller.endpoint")
    if not all(reading.is_sound(key) for key in keys):
        return
    cfg = config.controller
    if cfg.endpoint_bind is not None and not cfg.endpoint_hosts:
        reading.note(f"controller.endpoint_bind = {_show(cfg.endpoint_bind)}: only a fleet's endpoints are bound "
                     "elsewhere; set controller.endpoint_hosts to every controller's endpoint host, or drop it")
    if cfg.endpoint_hosts and cfg.endpoint == "in-process":
        reading.note('controller.endpoint_hosts: an "in-process" endpoint ends with its controller; set '
                     'controller.endpoint = "process" (or "external") for a fleet\'s endpoints')


def _sound_value(table: Mapping[str, Any], prefix: str, key: str, reading: _Reading) -> Any:
    path = f"{prefix}.{key}"
    return table.get(key) if reading.is_sound(path) else None


def _check_listener(pair: Mapping[str, Any], prefix: str, listeners: list[tuple[str, str]],
                    reading: _Reading) -> None:
    address = _sound_value(pair, prefix, "endpoint_listen", reading)
    if address is None:
        return
    path = f"{prefix}.endpoint_listen"
    for other_path, other in listeners:
        if reading.is_sound(other_path) and _is_clash(address, other):
            reading.note(f"{path} = {_show(address)}: clashes with {other_path} = {_show(other)}; "
                         "each listener needs its own port")
            return
    listeners.append((path, address))


def _is_clash(address: str, other: str) -> bool:
    (host, port), (other_host, other_port) = split_host_port(address), split_host_port(other)
    return port == other_port and (host == other_host or bool({host, other_host} & _WILDCARD_HOSTS))


def _check_gcp_project(side: Any, prefix: str, config: Config, reading: _Reading) -> None:
    if not isinstance(side, dict) or not reading.is_sound("gcp.project") or config.gcp.project is not None:
        return
    if _sound_value(side, prefix, "provider", reading) == "gcp":
        reading.note(f"{prefix}.provider = 'gcp': needs gcp.project to be set "
                     "(e.g. project = 'my-project' under [gcp])")

