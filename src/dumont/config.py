"""The Dumont config file: its TOML shape, its defaults, and the checks run when it is loaded.

A config protecting one pair (every key is optional except inside ``[[pairs]]``)::

    health_check_interval = 10          # top-level keys: timing, failover and GPU rental
    gpu_preferred_regions = ["TH", "VN", "JP", "EU"]

    [standby]                           # and [replication] [health] [controller] [notifications]
    machine_type = "e2-medium"

    [vast]
    api_key_file = "~/.config/dumont/vast_api_key"     # a 0600 file; never the key itself

    [gcp]
    project = "my-project"

    [[pairs]]                           # zero or more protected workspaces
    name = "train"
    endpoint_listen = "127.0.0.1:2222"
    [pairs.primary]
    provider = "vast"
    [pairs.standby]
    provider = "gcp"

Each table is a frozen dataclass below. Each field carries its default and, in its metadata, the rule that
checks it (``field(default=10.0, metadata=_checked_by(_SECONDS))``), so defaults and accepted forms live in
one place. Loading collects every problem -- bad values, unknown keys (with the closest known key), secrets
written in the text, secret files that others can read, broken timing rules -- and raises one
``ConfigError`` that lists them all. Secrets never enter the config, only the paths of the 0600 files that
hold them.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit

from dumont.errors import ConfigError

TerminationAction = Literal["STOP", "DELETE"]
ReplicationMode = Literal["direct", "relay"]
FenceAction = Literal["stop", "destroy"]
ProviderName = Literal["vast", "gcp", "local"]

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

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


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


def _whole(what: str, *, at_least: int) -> _Rule:
    return _when(f"{what}, at least {at_least}", lambda raw: _is_whole(raw) and raw >= at_least)


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


_PAIR_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_SECONDS = _number("a number of seconds", above=0)
_FLAG = _when("true or false", lambda raw: isinstance(raw, bool), show_example=False)
_TEXT = _when("a non-empty string", _is_text)
_ADDRESS = _when('a "host:port" address with a port from 1 to 65535', _is_address)
_ADDRESSES = _when('a list of "host:port" addresses', functools.partial(_is_list_of, _is_address), tuple)
_WEB_URL = _when("an http:// or https:// URL", _is_web_url)
_REGIONS = _when("a non-empty list, without repeats and in order of preference, of 2-letter country codes"
                 " or region names (" + ", ".join(sorted(REGION_NAMES)) + ")", _is_regions, tuple)
_EVENTS = _when(f'a list of event names ("{ALL_EVENTS}" for every event)',
                functools.partial(_is_list_of, _is_text), tuple)
_PAIR_NAME = _when("1 to 40 lowercase letters, digits and dashes, starting with a letter or digit",
                   lambda raw: isinstance(raw, str) and _PAIR_NAME_PATTERN.fullmatch(raw) is not None)
_WORKSPACE = _when('an absolute path other than "/", without ".."', _is_workspace)
_LOCAL_PATH = _Rule("a path (~ and paths relative to the config file's folder work)", _local_path)
_SECRET_FILE = _Rule("the path of a file only you can read (mode 0600)", _secret_file)


# --- Settings: each dataclass field carries its default and, in its metadata, the rule that checks it -----


@dataclass(frozen=True)
class _Setting:
    """How one key is read: by a rule (with an example for messages), or as a table / array of tables."""

    rule: _Rule | None = None
    example: object = None  # None: the field's default is the example
    table: type[Any] | None = None
    many: bool = False  # an array of tables, like [[pairs]]


def _checked_by(rule: _Rule, *, example: object = None) -> dict[str, _Setting]:
    return {"setting": _Setting(rule, example)}


def _holds(table: type[Any], *, many: bool = False) -> dict[str, _Setting]:
    return {"setting": _Setting(table=table, many=many)}


def _setting_of(spec: Field[Any]) -> _Setting:
    return cast(_Setting, spec.metadata["setting"])


def _is_required(spec: Field[Any]) -> bool:
    return spec.default is MISSING and spec.default_factory is MISSING


def _must_be(spec: Field[Any]) -> str:
    setting = _setting_of(spec)
    assert setting.rule is not None
    if not setting.rule.show_example:
        return f"must be {setting.rule.expected}"
    example = spec.default if setting.example is None else setting.example
    return f"must be {setting.rule.expected} (e.g. {_show_example(example)})"


def _default_state_dir() -> Path:
    return Path("~/.local/state/dumont").expanduser()


# --- The schema -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandbyConfig:
    """[standby]: the CPU machine that keeps the hot copy (a GCP spot VM)."""

    machine_type: str = field(default="e2-medium", metadata=_checked_by(_TEXT))
    disk_gb: int = field(default=20, metadata=_checked_by(_whole("a whole number of GB", at_least=10)))
    image: str = field(default="projects/debian-cloud/global/images/family/debian-12",
                       metadata=_checked_by(_TEXT))
    termination_action: TerminationAction = field(default="STOP",
                                                  metadata=_checked_by(_choice(TerminationAction)))


@dataclass(frozen=True)
class ReplicationConfig:
    """[replication]: how the workspace is copied, and the guards that refuse a wrong source."""

    mode: ReplicationMode = field(default="direct", metadata=_checked_by(_choice(ReplicationMode)))
    keep_snapshots: int = field(default=3, metadata=_checked_by(_whole("a whole number of snapshots",
                                                                       at_least=1)))
    max_delete_fraction: float = field(default=0.5, metadata=_checked_by(_number("a fraction", above=0,
                                                                                 at_most=1)))
    near_empty_fraction: float = field(default=0.05, metadata=_checked_by(_number("a fraction", at_least=0,
                                                                                  below=1)))
    min_free_fraction: float = field(default=0.05, metadata=_checked_by(_number("a fraction", at_least=0,
                                                                                at_most=0.5)))
    transfer_timeout_seconds: float = field(default=3600.0, metadata=_checked_by(_SECONDS))
    io_timeout_seconds: int = field(default=60, metadata=_checked_by(_whole("a whole number of seconds",
                                                                            at_least=5)))
    on_change: bool = field(default=False, metadata=_checked_by(_FLAG))
    change_debounce_seconds: float = field(default=1.0, metadata=_checked_by(_SECONDS))
    standby_disk_alert_fraction: float = field(default=0.8, metadata=_checked_by(_number(
        "a fraction", above=0, at_most=1)))


@dataclass(frozen=True)
class HealthConfig:
    """[health]: the probes run against each host every ``health_check_interval``."""

    probe_timeout_seconds: float = field(default=5.0, metadata=_checked_by(_SECONDS))
    gpu_check_command: str | None = field(default=None, metadata=_checked_by(_TEXT, example="nvidia-smi"))
    # Empty means: check that the provider API hosts answer.
    network_check_targets: tuple[str, ...] = field(default=(), metadata=_checked_by(
        _ADDRESSES, example=["console.vast.ai:443"]))


@dataclass(frozen=True)
class ControllerConfig:
    """[controller]: the local HTTP API and how failover treats the old primary."""

    api_listen: str = field(default="127.0.0.1:8787", metadata=_checked_by(_ADDRESS))
    api_token_file: Path | None = field(default=None, metadata=_checked_by(
        _SECRET_FILE, example="~/.config/dumont/api_token"))
    fence_action: FenceAction = field(default="stop", metadata=_checked_by(_choice(FenceAction)))
    salvage_outbid: bool = field(default=False, metadata=_checked_by(_FLAG))
    max_recoveries_per_day: int = field(default=3, metadata=_checked_by(_whole("a whole number", at_least=0)))
    # Public keys (authorized_keys format) people log in with; every host the controller creates accepts them.
    user_keys_file: Path | None = field(default=None, metadata=_checked_by(
        _LOCAL_PATH, example="~/.ssh/id_ed25519.pub"))


@dataclass(frozen=True)
class VastConfig:
    """[vast]: the Vast.ai API and the offers a new GPU is rented from."""

    api_url: str = field(default="https://console.vast.ai", metadata=_checked_by(_WEB_URL))
    api_key_file: Path | None = field(default=None, metadata=_checked_by(
        _SECRET_FILE, example="~/.config/dumont/vast_api_key"))
    min_reliability: float = field(default=0.98, metadata=_checked_by(_number("a number", at_least=0,
                                                                              at_most=1)))
    interruptible: bool = field(default=True, metadata=_checked_by(_FLAG))
    num_gpus: int = field(default=1, metadata=_checked_by(_whole("a whole number of GPUs", at_least=1)))
    gpu_name: str | None = field(default=None, metadata=_checked_by(_TEXT, example="RTX 4090"))
    offer_cache_size: int = field(default=8, metadata=_checked_by(_whole("a whole number of offers",
                                                                         at_least=0)))
    max_attempts: int = field(default=5, metadata=_checked_by(_whole("a whole number of attempts",
                                                                     at_least=1)))
    backoff_initial_seconds: float = field(default=5.0, metadata=_checked_by(_SECONDS))
    backoff_max_seconds: float = field(default=60.0, metadata=_checked_by(_SECONDS))


@dataclass(frozen=True)
class GcpConfig:
    """[gcp]: the Compute Engine project the standby VMs live in."""

    project: str | None = field(default=None, metadata=_checked_by(_TEXT, example="my-project"))
    zone: str = field(default="us-central1-a", metadata=_checked_by(_TEXT))
    api_endpoint: str | None = field(default=None, metadata=_checked_by(
        _WEB_URL, example="https://compute.googleapis.com"))
    credentials_file: Path | None = field(default=None, metadata=_checked_by(
        _SECRET_FILE, example="~/.config/dumont/gcp.json"))


@dataclass(frozen=True)
class NotificationsConfig:
    """[notifications]: where alerts go (apprise URLs carry tokens, so they live in a 0600 file)."""

    urls_file: Path | None = field(default=None, metadata=_checked_by(
        _SECRET_FILE, example="~/.config/dumont/apprise_urls"))
    events: tuple[str, ...] = field(default=(ALL_EVENTS,), metadata=_checked_by(
        _EVENTS, example=["failover", "recovery"]))

    def wants(self, event: str) -> bool:
        """Whether ``event`` is to be sent."""
        return ALL_EVENTS in self.events or event in self.events


@dataclass(frozen=True)
class InstanceConfig:
    """[pairs.primary] or [pairs.standby]: where one side of a pair runs."""

    provider: ProviderName = field(metadata=_checked_by(_choice(ProviderName)))
    instance_id: str | None = field(default=None, metadata=_checked_by(_TEXT, example="12345678"))


@dataclass(frozen=True)
class PairConfig:
    """[[pairs]]: one protected workspace, its two hosts and its stable SSH endpoint."""

    name: str = field(metadata=_checked_by(_PAIR_NAME, example="train"))
    endpoint_listen: str = field(metadata=_checked_by(_ADDRESS, example="127.0.0.1:2222"))
    primary: InstanceConfig = field(metadata=_holds(InstanceConfig))
    standby: InstanceConfig = field(metadata=_holds(InstanceConfig))
    workspace: str = field(default="/workspace", metadata=_checked_by(_WORKSPACE))


@dataclass(frozen=True)
class Config:
    """The whole config: top-level timing and GPU-rental settings, one table per part, and the pairs."""

    sync_interval_seconds: float = field(default=30.0, metadata=_checked_by(_SECONDS))
    health_check_interval: float = field(default=10.0, metadata=_checked_by(_SECONDS))
    failover_threshold: int = field(default=3, metadata=_checked_by(_whole("a whole number of failed checks",
                                                                           at_least=1)))
    auto_failover: bool = field(default=True, metadata=_checked_by(_FLAG))
    auto_recovery: bool = field(default=True, metadata=_checked_by(_FLAG))
    gpu_max_price: float = field(default=0.50, metadata=_checked_by(_number(
        "a price in $/h (Vast's dph_total)", above=0)))
    gpu_min_ram_gb: float = field(default=8.0, metadata=_checked_by(_number("a number of GB of GPU memory",
                                                                            above=0)))
    gpu_preferred_regions: tuple[str, ...] = field(default=("TH", "VN", "JP", "EU"),
                                                   metadata=_checked_by(_REGIONS))
    gpu_image: str = field(default="pytorch/pytorch:2.1.0-cuda12.1-cudnn8", metadata=_checked_by(_TEXT))
    gpu_disk_gb: int = field(default=50, metadata=_checked_by(_whole("a whole number of GB", at_least=1)))
    ssh_wait_timeout: float = field(default=300.0, metadata=_checked_by(_SECONDS))
    gcp_spot: bool = field(default=True, metadata=_checked_by(_FLAG))
    state_dir: Path = field(default_factory=_default_state_dir, metadata=_checked_by(
        _LOCAL_PATH, example="~/.local/state/dumont"))
    standby: StandbyConfig = field(default_factory=StandbyConfig, metadata=_holds(StandbyConfig))
    replication: ReplicationConfig = field(default_factory=ReplicationConfig,
                                           metadata=_holds(ReplicationConfig))
    health: HealthConfig = field(default_factory=HealthConfig, metadata=_holds(HealthConfig))
    controller: ControllerConfig = field(default_factory=ControllerConfig, metadata=_holds(ControllerConfig))
    vast: VastConfig = field(default_factory=VastConfig, metadata=_holds(VastConfig))
    gcp: GcpConfig = field(default_factory=GcpConfig, metadata=_holds(GcpConfig))
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig,
                                               metadata=_holds(NotificationsConfig))
    pairs: tuple[PairConfig, ...] = field(default=(), metadata=_holds(PairConfig, many=True))

    @property
    def detection_worst_case_seconds(self) -> float:
        """The longest a dead primary can go unnoticed: every failed check, the last one timing out."""
        return self.health_check_interval * self.failover_threshold + self.health.probe_timeout_seconds


def _known_paths(cls: type[Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for spec in fields(cls):
        setting = _setting_of(spec)
        paths.append(prefix + spec.name)
        if setting.table is not None:
            paths += _known_paths(setting.table, f"{prefix}{spec.name}.")
    return paths


_KNOWN_PATHS: Final = _known_paths(Config)


@dataclass(frozen=True)
class _TimingRule:
    """``shorter`` must stay below ``longer`` (or equal it, when ``or_equal``), for the reason ``why``."""

    shorter: str
    longer: str
    why: str
    or_equal: bool = False


_TIMING_RULES: Final = (
    _TimingRule("health.probe_timeout_seconds", "health_check_interval",
                "a probe must finish before the next check starts"),
    _TimingRule("replication.io_timeout_seconds", "replication.transfer_timeout_seconds",
                "a stalled transfer must be noticed before the whole transfer times out"),
    _TimingRule("vast.backoff_initial_seconds", "vast.backoff_max_seconds",
                "the first wait between attempts cannot be longer than the longest one", or_equal=True),
    _TimingRule("health.probe_timeout_seconds", "ssh_wait_timeout",
                "a new GPU must get longer to answer SSH than one probe takes"),
)


# --- Loading ----------------------------------------------------------------------------------------------


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
    _refuse_secrets(data, "", reading)
    config = cast(Config, _read_table(Config, data, "", reading))  # Config has no required keys
    _check_timing(config, reading)
    _check_pairs(data, config, reading)
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

    def refuse(self, path: str, value: object, reason: str) -> None:
        """Record that the value at ``path`` is refused, and why."""
        self.note(f"{path} = {_show(value)}: {reason}")
        self.invalid.add(path)

    def is_sound(self, path: str) -> bool:
        """Whether neither the value at ``path`` nor a table holding it was refused."""
        return not any(path == bad or path.startswith((bad + ".", bad + "[")) for bad in self.invalid)


def _read_table(cls: type[Any], raw: Mapping[str, Any], prefix: str, reading: _Reading) -> Any:
    _refuse_unknown_keys(cls, raw, prefix, reading)
    values: dict[str, Any] = {}
    complete = True
    for spec in fields(cls):
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
        reading.refuse(path, raw, exc.reason or _must_be(spec))
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


def _refuse_unknown_keys(cls: type[Any], raw: Mapping[str, Any], prefix: str, reading: _Reading) -> None:
    known = [spec.name for spec in fields(cls)]
    for key, value in raw.items():
        if key not in known and not _is_secret_name(key):
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


# --- Writing a config back: as plain data, and as TOML -----------------------------------------------------


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as JSON-ready data: paths as strings, tuples as lists, unset values as None, no secrets."""
    return cast(dict[str, Any], _plain(config))


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {spec.name: _plain(getattr(value, spec.name)) for spec in fields(value)}
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
