"""The config file: seed defaults, every field's checks, secrets, timing rules, pairs and the TOML writer."""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dumont.config import (
    Config,
    InstanceConfig,
    PairConfig,
    check_config_file,
    config_to_dict,
    default_config,
    load_config,
    parse_config,
    split_host_port,
    to_toml,
)
from dumont.errors import ConfigError

SOURCE = "dumont.toml"


def value_at(config: Any, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), config)


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    head, _, rest = dotted.partition(".")
    return {head: nested(rest, value) if rest else value}


def merged(*tables: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for table in tables:
        for key, value in table.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def parse(data: dict[str, Any], base_dir: Path) -> Config:
    return parse_config(data, source=SOURCE, base_dir=base_dir)


def problems_of(data: dict[str, Any], base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data, base_dir)
    assert caught.value.exit_code == 2
    return caught.value.problems


def pair(name: str = "train", endpoint: str = "127.0.0.1:2222", primary: str = "vast",
         standby: str = "vast", **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoint_listen": endpoint, "primary": {"provider": primary},
            "standby": {"provider": standby}, **extra}


def secret_file(directory: Path, name: str = "secret", mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text("not-for-your-eyes\n")
    path.chmod(mode)
    return path


# --- Defaults ---------------------------------------------------------------------------------------------

SEED_DEFAULTS = [
    ("sync_interval_seconds", 30),
    ("health_check_interval", 10),
    ("failover_threshold", 3),
    ("auto_failover", True),
    ("auto_recovery", True),
    ("gpu_max_price", 0.50),
    ("gpu_min_ram_gb", 8),
    ("gpu_preferred_regions", ("TH", "VN", "JP", "EU")),
    ("gpu_image", "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"),
    ("gpu_disk_gb", 50),
    ("ssh_wait_timeout", 300),
    ("gcp_spot", True),
    ("standby.machine_type", "e2-medium"),
    ("standby.disk_gb", 20),
    ("standby.termination_action", "STOP"),
    ("replication.mode", "direct"),
    ("replication.keep_snapshots", 3),
    ("replication.max_delete_fraction", 0.5),
    ("replication.standby_disk_alert_fraction", 0.8),
    ("health.probe_timeout_seconds", 5),
    ("health.gpu_check_command", None),
    ("health.network_check_targets", ()),
    ("controller.api_listen", "127.0.0.1:8787"),
    ("controller.api_token_file", None),
    ("controller.fence_action", "stop"),
    ("controller.max_recoveries_per_day", 3),
    ("controller.max_recoveries_in_flight", 4),
    ("vast.api_url", "https://console.vast.ai"),
    ("vast.api_key_file", None),
    ("vast.min_reliability", 0.98),
    ("vast.bid_margin", 0.2),
    ("vast.min_request_interval_seconds", 0.25),
    ("vast.image_registry_url", "https://hub.docker.com"),
    ("gcp.zone", "us-central1-a"),
    ("gcp.project", None),
    ("notifications.events", ("*",)),
    ("store.url", ""),
    ("store.password_file", None),
    ("pairs", ()),
]


@pytest.mark.parametrize(("path", "expected"), SEED_DEFAULTS)
def test_defaults_are_the_seed_values(path: str, expected: object) -> None:
    assert value_at(default_config(), path) == expected


def test_a_file_with_only_pairs_gives_the_defaults_for_the_rest(tmp_path: Path) -> None:
    assert dataclasses.replace(parse({"pairs": [pair()]}, tmp_path), pairs=()) == default_config()


def test_the_default_state_dir_is_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config().state_dir == tmp_path / ".local/state/dumont"


def test_detection_worst_case_is_every_failed_check_plus_the_last_timeout() -> None:
    assert default_config().detection_worst_case_seconds == 10 * 3 + 5


# --- Every field's bad value ------------------------------------------------------------------------------

# (dotted path, bad value, how the value is shown, what the problem says is expected)
BAD_VALUES: list[tuple[str, Any, str, str]] = [
    ("sync_interval_seconds", 0, "0", "must be a number of seconds greater than 0 and at most 604800 (e.g. 30)"),
    ("health_check_interval", -5, "-5", "must be a number of seconds greater than 0 and at most 604800 (e.g. 10)"),
    ("failover_threshold", 0, "0", "must be a whole number of failed checks from 1 to 1000000 (e.g. 3)"),
    ("failover_threshold", 2.0, "2.0", "must be a whole number of failed checks from 1 to 1000000 (e.g. 3)"),
    ("auto_failover", "yes", "'yes'", "must be true or false"),
    ("auto_recovery", 1, "1", "must be true or false"),
    ("gpu_max_price", 0, "0", "must be a price in $/h (Vast's dph_total) greater than 0 and at most 1000 (e.g. 0.5)"),
    ("gpu_max_price", True, "true", "a price in $/h (Vast's dph_total) greater than 0 and at most 1000 (e.g. 0.5)"),
    ("gpu_min_ram_gb", -8, "-8", "must be a number of GB of GPU memory greater than 0 and at most 10000 (e.g. 8)"),
    ("gpu_preferred_regions", [], "[]", "must be a non-empty list"),
    ("gpu_preferred_regions", ["jp"], "['jp']", "2-letter country codes or region names"),
    ("gpu_preferred_regions", ["JP", "JP"], "['JP', 'JP']", "without repeats"),
    ("gpu_preferred_regions", "JP", "'JP'", "(e.g. ['TH', 'VN', 'JP', 'EU'])"),
    ("gpu_image", "", "''", "must be a non-empty string (e.g. 'pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime')"),
    ("gpu_disk_gb", 0, "0", "must be a whole number of GB from 1 to 65536 (e.g. 50)"),
    ("gpu_markets", ["gcp"], "['gcp']", "a non-empty list, without repeats, of GPU markets ('vast')"),
    ("gpu_markets", [], "[]", "(e.g. ['vast'])"),
    ("ssh_wait_timeout", float("inf"), "inf", "a number of seconds greater than 0 and at most 604800 (e.g. 300)"),
    ("gcp_spot", "true", "'true'", "must be true or false"),
    ("state_dir", "", "''", "must be a path (~ and paths relative to the config file's folder work)"
                            " (e.g. '~/.local/state/dumont')"),
    ("standby.machine_type", 5, "5", "must be a non-empty string (e.g. 'e2-medium')"),
    ("standby.disk_gb", 5, "5", "must be a whole number of GB from 10 to 65536 (e.g. 20)"),
    ("standby.image", " ", "' '", "must be a non-empty string"),
    ("standby.termination_action", "stop", "'stop'", "must be one of 'STOP', 'DELETE'"),
    ("standby.ssh_user", "root", "'root'", "must be a user name other than root"),
    ("standby.ssh_user", "Bob", "'Bob'", "(e.g. 'dumont')"),
    ("standby.network_tag", "Dumont_Standby", "'Dumont_Standby'", "must be a GCP network tag"),
    ("standby.ssh_source_ranges", ["10.0.0.1/8"], "['10.0.0.1/8']", "a non-empty list of address ranges"),
    ("standby.ssh_source_ranges", [], "[]", "(e.g. ['0.0.0.0/0'])"),
    ("standby.boot_timeout_seconds", 0, "0", "a number of seconds greater than 0 and at most 604800 (e.g. 600)"),
    ("replication.mode", "push", "'push'", "must be one of 'direct', 'relay'"),
    ("replication.keep_snapshots", 0, "0", "must be a whole number of snapshots from 1 to 1000000 (e.g. 3)"),
    ("replication.max_delete_fraction", 0, "0", "must be a fraction greater than 0 and at most 1 (e.g. 0.5)"),
    ("replication.max_delete_fraction", 1.5, "1.5", "must be a fraction greater than 0 and at most 1"),
    ("replication.near_empty_fraction", 1, "1", "must be a fraction at least 0 and less than 1 (e.g. 0.05)"),
    ("replication.min_free_fraction", 0.6, "0.6", "a fraction at least 0 and at most 0.5 (e.g. 0.05)"),
    ("replication.transfer_timeout_seconds", 0, "0", "a number of seconds greater than 0 and at most 604800"),
    ("replication.io_timeout_seconds", 4, "4", "must be a whole number of seconds from 5 to 1000000 (e.g. 60)"),
    ("replication.io_timeout_seconds", 60.0, "60.0", "must be a whole number of seconds from 5 to 1000000"),
    ("replication.on_change", 1, "1", "must be true or false"),
    ("controller.salvage_outbid", "yes", "'yes'", "must be true or false"),
    ("controller.salvage_timeout_seconds", 0, "0", "a number of seconds greater than 0"),
    ("replication.change_debounce_seconds", -1, "-1", "a number of seconds at least 0 and at most 3600"),
    ("replication.push_streams", 0, "0", "a whole number of streams from 1 to 16"),
    ("replication.full_scan_seconds", -5, "-5", "a number of seconds at least 0 and at most 86400"),
    ("replication.scrub_interval_seconds", 0, "0", "a number of seconds greater than 0 and at most 604800"),
    ("replication.scrub_mb_per_round", 0, "0", "must be a whole number of MB from 1 to 1000000 (e.g. 512)"),
    ("replication.standby_disk_alert_fraction", 0, "0", "must be a fraction greater than 0 and at most 1"),
    ("health.probe_timeout_seconds", 0, "0", "must be a number of seconds greater than 0 and at most 604800 (e.g. 5)"),
    ("health.gpu_check_command", "", "''", "must be a non-empty string (e.g. 'nvidia-smi')"),
    ("health.network_check_targets", ["vast.ai"], "['vast.ai']", 'must be a list of "host:port" addresses'),
    ("health.network_check_targets", ["vast.ai:0"], "['vast.ai:0']", "(e.g. ['console.vast.ai:443'])"),
    ("controller.api_listen", "8787", "'8787'", 'must be a "host:port" address with a port from 1 to 65535'),
    ("controller.api_listen", "localhost:70000", "'localhost:70000'", "(e.g. '127.0.0.1:8787')"),
    ("controller.api_listen", ":8787", "':8787'", 'must be a "host:port" address'),
    ("controller.api_token_file", "", "''", "must be the path of a file only you can read (mode 0600)"),
    ("controller.fence_action", "kill", "'kill'", "must be one of 'stop', 'destroy'"),
    ("controller.max_recoveries_per_day", -1, "-1", "must be a whole number from 0 to 1000000 (e.g. 3)"),
    ("controller.max_recoveries_in_flight", 2.5, "2.5", "must be a whole number from 0 to 1000000 (e.g. 4)"),
    ("controller.max_standby_attempts_per_hour", 0, "0", "must be a whole number from 1 to 1000000 (e.g. 3)"),
    ("controller.endpoint", "sidecar", "'sidecar'", "must be one of 'process', 'external', 'in-process'"),
    ("controller.endpoint_dir", 3, "3", "must be a path"),
    ("controller.shared_dir", 3, "3", "must be a path"),
    ("health.fresh_login_every", 0, "0", "a whole number of probes"),
    ("controller.lease_seconds", 0, "0", "a number of seconds greater than 0"),
    ("controller.bootstrap_timeout_seconds", -1, "-1", "a number of seconds greater than 0 and at most 604800"),
    ("controller.user_keys_file", 7, "7", "must be a path"),
    ("vast.api_url", "ftp://console.vast.ai", "'ftp://console.vast.ai'", "an http:// or https:// URL"),
    ("vast.api_url", "console.vast.ai", "'console.vast.ai'", "(e.g. 'https://console.vast.ai')"),
    ("vast.api_key_file", 5, "5", "must be the path of a file only you can read (mode 0600)"),
    ("vast.min_reliability", 1.5, "1.5", "must be a number at least 0 and at most 1 (e.g. 0.98)"),
    ("vast.interruptible", "yes", "'yes'", "must be true or false"),
    ("vast.num_gpus", 0, "0", "must be a whole number of GPUs from 1 to 1000000 (e.g. 1)"),
    ("vast.gpu_name", "", "''", "must be a non-empty string (e.g. 'RTX 4090')"),
    ("vast.offer_cache_size", -1, "-1", "must be a whole number of offers from 0 to 1000000 (e.g. 8)"),
    ("vast.max_attempts", 0, "0", "must be a whole number of attempts from 1 to 1000000 (e.g. 5)"),
    ("vast.backoff_initial_seconds", 0, "0", "must be a number of seconds greater than 0 and at most 604800 (e.g. 5)"),
    ("vast.backoff_max_seconds", -1, "-1", "must be a number of seconds greater than 0 and at most 604800 (e.g. 60)"),
    ("vast.launch_timeout_seconds", 0, "0", "a number of seconds greater than 0 and at most 604800 (e.g. 3600)"),
    ("vast.bid_margin", -0.1, "-0.1", "must be a fraction at least 0 and at most 10 (e.g. 0.2)"),
    ("vast.bid_margin", "20%", "'20%'", "must be a fraction"),
    ("vast.image_registry_url", "hub.docker.com", "'hub.docker.com'", "(e.g. 'https://hub.docker.com')"),
    ("gcp.project", "", "''", "must be a non-empty string (e.g. 'my-project')"),
    ("gcp.zone", [], "[]", "must be a non-empty string (e.g. 'us-central1-a')"),
    ("gcp.api_endpoint", "compute", "'compute'", "must be an http:// or https:// URL"),
    ("gcp.credentials_file", True, "true", "must be the path of a file only you can read (mode 0600)"),
    ("notifications.urls_file", "", "''", "must be the path of a file only you can read (mode 0600)"),
    ("notifications.events", "all", "'all'", 'must be a list of event names ("*" for every event)'),
    ("notifications.events", [""], "['']", "(e.g. ['failover', 'recovery'])"),
    ("store.url", "mysql://db/dumont", "'mysql://db/dumont'", '"sqlite:///ABSOLUTE/PATH" or "postgresql://'),
    ("store.url", "sqlite://state.db", "'sqlite://state.db'", "(e.g. 'postgresql://dumont@db:5432/dumont')"),
    ("store.url", "postgresql://db/dumont", "'postgresql://db/dumont'", "USER@HOST:PORT/DB"),
    ("store.url", "postgresql://u@db:port/x", "'postgresql://u@db:port/x'", "USER@HOST:PORT/DB"),
    ("vast.min_request_interval_seconds", -1, "-1", "at least 0 and at most 60 (e.g. 0.25)"),
    ("store.password_file", 7, "7", "must be the path of a file only you can read (mode 0600)"),
    ("controller.endpoint_hosts", ["a", "a"], "['a', 'a']", "a list, without repeats, of host names or IP"),
    ("controller.endpoint_hosts", ["%h"], "['%h']", "host names or IP addresses"),
    ("controller.endpoint_bind", "a b", "'a b'", "must be a host name or an IP address"),
]


@pytest.mark.parametrize(("path", "bad", "shown", "expected"), BAD_VALUES)
def test_a_bad_value_names_the_field_the_value_and_the_expected_form(
        path: str, bad: Any, shown: str, expected: str, tmp_path: Path) -> None:
    [problem] = problems_of(nested(path, bad), tmp_path)
    assert problem.startswith(f"{SOURCE}: {path} = {shown}: must be ")
    assert expected in problem


# (dotted path inside one [[pairs]] table, bad value, how it is shown, expected form)
BAD_PAIR_VALUES: list[tuple[str, Any, str, str]] = [
    ("name", "Train", "'Train'", "1 to 40 lowercase letters, digits and dashes, starting with a letter"),
    ("name", "-x", "'-x'", "(e.g. 'train')"),
    ("name", "a" * 41, repr("a" * 41), "1 to 40 lowercase letters"),
    ("endpoint_listen", "2222", "'2222'", "address with a port from 1 to 65535 (e.g. '127.0.0.1:2222')"),
    ("workspace", "workspace", "'workspace'", "must be \"/workspace\" (another workspace path is not supported"),
    ("workspace", "/", "'/'", "move or link the data there"),
    ("workspace", "/data/../etc", "'/data/../etc'", "not supported yet"),
    ("workspace", "/data", "'/data'", "not supported yet"),  # hostile-review.md #7: accepted, then ignored
    ("primary.provider", "aws", "'aws'", "must be a registered provider ('gcp', 'vast')"),
    ("primary.instance_id", "", "''", "must be a non-empty string (e.g. '12345678')"),
    ("standby.provider", 5, "5", "must be a registered provider ('gcp', 'vast')"),
    ("standby.instance_id", 5, "5", "must be a non-empty string"),
]


@pytest.mark.parametrize(("path", "bad", "shown", "expected"), BAD_PAIR_VALUES)
def test_a_bad_pair_value_names_the_pair_field_the_value_and_the_expected_form(
        path: str, bad: Any, shown: str, expected: str, tmp_path: Path) -> None:
    [problem] = problems_of({"pairs": [merged(pair(), nested(path, bad))]}, tmp_path)
    assert problem.startswith(f"{SOURCE}: pairs[0].{path} = {shown}: must be ")
    assert expected in problem


def leaf_paths(cls: type[Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for spec in dataclasses.fields(cls):
        setting = spec.metadata["setting"]
        if setting.internal:
            continue  # filled by the loader (plug-in providers' tables), never a key of the file
        table = setting.table
        paths |= leaf_paths(table, f"{prefix}{spec.name}.") if table else {prefix + spec.name}
    return paths


def test_every_field_has_a_bad_value_case() -> None:
    top = {path for path, *_ in BAD_VALUES}
    in_pairs = {"pairs." + path for path, *_ in BAD_PAIR_VALUES}
    assert leaf_paths(Config) == top | in_pairs


@pytest.mark.parametrize("path", ["sync_interval_seconds", "failover_threshold", "gpu_disk_gb",
                                  "replication.max_delete_fraction", "vast.min_reliability"])
def test_a_boolean_is_never_a_number(path: str, tmp_path: Path) -> None:
    [problem] = problems_of(nested(path, True), tmp_path)
    assert problem.startswith(f"{SOURCE}: {path} = true: must be a ")


def test_whole_numbers_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    config = parse({"health_check_interval": 12, "gpu_max_price": 1}, tmp_path)
    assert config.health_check_interval == 12.0
    assert isinstance(config.health_check_interval, float)
    assert isinstance(config.gpu_max_price, float)


def test_good_values_are_kept(tmp_path: Path) -> None:
    config = parse({"gpu_preferred_regions": ["EU", "US"], "standby": {"termination_action": "DELETE"},
                    "health": {"network_check_targets": ["[::1]:443", "api.vast.ai:443"]},
                    "vast": {"gpu_name": "RTX 4090", "backoff_initial_seconds": 60}}, tmp_path)
    assert config.gpu_preferred_regions == ("EU", "US")
    assert config.standby.termination_action == "DELETE"
    assert config.health.network_check_targets == ("[::1]:443", "api.vast.ai:443")
    assert config.vast.gpu_name == "RTX 4090"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {"health_check_interval": -5, "gpu_disk_gb": 1.5, "standby": {"disk_gb": 5},
            "vast": {"num_gpus": 0}, "sync_interval": 30}
    with pytest.raises(ConfigError) as caught:
        parse(data, tmp_path)
    problems = caught.value.problems
    assert len(problems) == 5
    assert str(caught.value) == "\n".join([f"{SOURCE}: 5 problems", *(f"  - {p}" for p in problems)])
    for path in ("health_check_interval", "gpu_disk_gb", "standby.disk_gb", "vast.num_gpus", "sync_interval"):
        assert any(problem.startswith(f"{SOURCE}: {path} = ") for problem in problems), path


def test_a_table_given_as_a_value_is_refused(tmp_path: Path) -> None:
    assert problems_of({"standby": "e2-medium"}, tmp_path) == [
        f"{SOURCE}: standby = 'e2-medium': must be a table ([standby])"]
    assert problems_of({"pairs": {"name": "x"}}, tmp_path) == [
        f"{SOURCE}: pairs = {{...}}: must be an array of tables ([[pairs]])"]


# --- Unknown keys -----------------------------------------------------------------------------------------

UNKNOWN_KEYS = [
    ({"sync_interval": 30}, "sync_interval = 30: unknown key; did you mean sync_interval_seconds?"),
    ({"standby": {"disk": 30}}, "standby.disk = 30: unknown key; did you mean standby.disk_gb?"),
    ({"standby": {"auto_failover": False}},
     "standby.auto_failover = false: unknown key; did you mean auto_failover? "
     "(it goes before the first [table] header)"),
    ({"zone": 1}, "zone = 1: unknown key; did you mean gcp.zone? (it goes under [gcp])"),
    ({"gcp": {"xyzzy": 1}}, "gcp.xyzzy = 1: unknown key; known keys here: project, zone, api_endpoint, "
                            "credentials_file"),
    ({"pairs": [pair(workspce="/w")]},
     "pairs[0].workspce = <a string>: unknown key; did you mean pairs[0].workspace?"),
]


@pytest.mark.parametrize(("data", "problem"), UNKNOWN_KEYS)
def test_an_unknown_key_is_refused_with_the_closest_known_key(
        data: dict[str, Any], problem: str, tmp_path: Path) -> None:
    assert problems_of(data, tmp_path) == [f"{SOURCE}: {problem}"]


def test_an_unknown_key_does_not_echo_a_string_value(tmp_path: Path) -> None:
    [problem] = problems_of({"vast": {"key": "sk-live-123"}}, tmp_path)
    assert "sk-live-123" not in problem
    assert problem.startswith(f"{SOURCE}: vast.key = <a string>: unknown key; ")


# --- Secrets ----------------------------------------------------------------------------------------------


def test_an_api_key_in_the_text_is_refused_with_the_way_to_do_it(tmp_path: Path) -> None:
    assert problems_of({"vast": {"api_key": "sk-live-123"}}, tmp_path) == [
        f"{SOURCE}: vast.api_key: secrets never go in the config text; put it in a file with mode 0600 and "
        "set vast.api_key_file (or use the VAST_API_KEY environment variable)"]


@pytest.mark.parametrize("data", [
    {"vast": {"api_key": "VALUE-1"}},
    {"controller": {"api_token": "VALUE-1"}},
    {"password": "VALUE-1"},
    {"gcp": {"client_secret": "VALUE-1"}},
    {"notifications": {"Slack_Token": "VALUE-1"}},
    {"pairs": [pair(ssh_password="VALUE-1")]},
    {"extra": {"deep": {"token": "VALUE-1"}}},
])
def test_a_secret_is_refused_without_echoing_it(data: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(data, tmp_path)
    assert "VALUE-1" not in str(caught.value)
    assert any("secrets never go in the config text" in problem for problem in caught.value.problems)


SECRET_FILES = ["vast.api_key_file", "controller.api_token_file", "gcp.credentials_file",
                "notifications.urls_file", "store.password_file"]


@pytest.mark.parametrize("path", SECRET_FILES)
def test_a_secret_file_readable_by_others_is_refused(path: str, tmp_path: Path) -> None:
    key = secret_file(tmp_path, mode=0o644)
    assert problems_of(nested(path, str(key)), tmp_path) == [
        f"{SOURCE}: {path} = '{key}': has mode 0644; run chmod 600 {key}"]


@pytest.mark.parametrize("path", SECRET_FILES)
def test_a_secret_file_only_its_owner_can_read_is_accepted(path: str, tmp_path: Path) -> None:
    key = secret_file(tmp_path, mode=0o600)
    assert value_at(parse(nested(path, str(key)), tmp_path), path) == key


def test_a_group_readable_secret_file_is_refused_and_the_fix_quotes_the_path(tmp_path: Path) -> None:
    key = secret_file(tmp_path, name="my key", mode=0o640)
    [problem] = problems_of(nested("vast.api_key_file", str(key)), tmp_path)
    assert problem.endswith(f"has mode 0640; run chmod 600 '{key}'")


def test_a_missing_secret_file_is_refused(tmp_path: Path) -> None:
    assert problems_of(nested("vast.api_key_file", "nope"), tmp_path) == [
        f"{SOURCE}: vast.api_key_file = 'nope': no such file ({tmp_path / 'nope'})"]


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    tmp_path.joinpath("keys").mkdir(mode=0o700)
    [problem] = problems_of(nested("vast.api_key_file", "keys"), tmp_path)
    assert problem.endswith("is not a regular file (" + str(tmp_path / "keys") + ")")


def test_paths_expand_home_and_resolve_against_the_config_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    key = secret_file(tmp_path / "home", name="vast_key")
    config = parse({"state_dir": "state", "vast": {"api_key_file": "~/vast_key"}}, tmp_path)
    assert config.state_dir == tmp_path / "state"
    assert config.vast.api_key_file == key


# --- Timing rules -----------------------------------------------------------------------------------------

TIMING_RULES = [
    ({"health_check_interval": 10, "health": {"probe_timeout_seconds": 10}},
     "health.probe_timeout_seconds = 10 must be less than health_check_interval = 10: "
     "a probe must finish before the next check starts"),
    ({"health_check_interval": 3},
     "health.probe_timeout_seconds = 5 must be less than health_check_interval = 3"),
    ({"replication": {"io_timeout_seconds": 120, "transfer_timeout_seconds": 60}},
     "replication.io_timeout_seconds = 120 must be less than replication.transfer_timeout_seconds = 60: "
     "a stalled transfer must be noticed before the whole transfer times out"),
    ({"vast": {"backoff_initial_seconds": 61}},
     "vast.backoff_initial_seconds = 61 must be at most vast.backoff_max_seconds = 60: "
     "the first wait between attempts cannot be longer than the longest one"),
    ({"ssh_wait_timeout": 4, "health_check_interval": 30},
     "health.probe_timeout_seconds = 5 must be less than ssh_wait_timeout = 4: "
     "a new GPU must get longer to answer SSH than one probe takes"),
    ({"controller": {"lease_seconds": 4}},
     "health.probe_timeout_seconds = 5 must be less than controller.lease_seconds = 4: "
     "a lease must outlast a probe, or a controller would lose its pairs while it waits on one"),
]


@pytest.mark.parametrize(("data", "problem"), TIMING_RULES)
def test_a_broken_timing_rule_is_refused_with_both_values(
        data: dict[str, Any], problem: str, tmp_path: Path) -> None:
    [found] = problems_of(data, tmp_path)
    assert found.startswith(f"{SOURCE}: {problem}")


def test_timing_rules_allow_equal_backoffs(tmp_path: Path) -> None:
    config = parse({"vast": {"backoff_initial_seconds": 60, "backoff_max_seconds": 60}}, tmp_path)
    assert config.vast.backoff_initial_seconds == config.vast.backoff_max_seconds


def test_a_refused_value_is_not_compared_again_by_a_timing_rule(tmp_path: Path) -> None:
    [problem] = problems_of({"health_check_interval": -5, "health": {"probe_timeout_seconds": 20}}, tmp_path)
    assert problem.startswith(f"{SOURCE}: health_check_interval = -5: ")


# --- Pairs ------------------------------------------------------------------------------------------------


def test_a_pair_is_read(tmp_path: Path) -> None:
    data = {"gcp": {"project": "p"}, "pairs": [pair(primary="vast", standby="gcp", workspace="/workspace")]}
    [read] = parse(data, tmp_path).pairs
    assert read == PairConfig(name="train", endpoint_listen="127.0.0.1:2222", primary=InstanceConfig("vast"),
                              standby=InstanceConfig("gcp"), workspace="/workspace")


def test_a_pair_needs_its_name_endpoint_and_both_hosts(tmp_path: Path) -> None:
    assert problems_of({"pairs": [{}]}, tmp_path) == [
        f"{SOURCE}: pairs[0].name: missing; must be 1 to 40 lowercase letters, digits and dashes, starting"
        " with a letter or digit (e.g. 'train')",
        f"{SOURCE}: pairs[0].endpoint_listen: missing; must be a \"host:port\" address with a port from 1 to"
        " 65535 (e.g. '127.0.0.1:2222')",
        f"{SOURCE}: pairs[0].primary: missing; add a [pairs.primary] table",
        f"{SOURCE}: pairs[0].standby: missing; add a [pairs.standby] table",
    ]


def test_pair_names_are_unique(tmp_path: Path) -> None:
    data = {"pairs": [pair("a", "127.0.0.1:2222"), pair("b", "127.0.0.1:2223"), pair("a", "127.0.0.1:2224")]}
    assert problems_of(data, tmp_path) == [
        f"{SOURCE}: pairs[2].name = 'a': already used by pairs[0]; each pair needs its own name"]


@pytest.mark.parametrize(("first", "second"), [
    ("127.0.0.1:2222", "127.0.0.1:2222"),
    ("0.0.0.0:2222", "127.0.0.1:2222"),
    ("127.0.0.1:2222", "[::]:2222"),
])
def test_pair_endpoints_are_unique(first: str, second: str, tmp_path: Path) -> None:
    assert problems_of({"pairs": [pair("a", first), pair("b", second)]}, tmp_path) == [
        f"{SOURCE}: pairs[1].endpoint_listen = '{second}': clashes with pairs[0].endpoint_listen = '{first}';"
        " each listener needs its own port"]


def test_a_pair_endpoint_cannot_take_the_api_port(tmp_path: Path) -> None:
    assert problems_of({"pairs": [pair("a", "127.0.0.1:8787")]}, tmp_path) == [
        f"{SOURCE}: pairs[0].endpoint_listen = '127.0.0.1:8787': clashes with controller.api_listen = "
        "'127.0.0.1:8787'; each listener needs its own port"]


def test_the_same_port_on_two_addresses_is_fine(tmp_path: Path) -> None:
    data = {"pairs": [pair("a", "127.0.0.1:2222"), pair("b", "127.0.0.2:2222")]}
    assert len(parse(data, tmp_path).pairs) == 2


def test_duplicates_are_found_next_to_other_pair_problems(tmp_path: Path) -> None:
    data = {"pairs": [pair("a", primary="aws"), pair("a")]}
    assert problems_of(data, tmp_path) == [
        f"{SOURCE}: pairs[0].primary.provider = 'aws': must be a registered provider ('gcp', 'vast') (e.g. 'vast')",
        f"{SOURCE}: pairs[1].name = 'a': already used by pairs[0]; each pair needs its own name",
        f"{SOURCE}: pairs[1].endpoint_listen = '127.0.0.1:2222': clashes with pairs[0].endpoint_listen = "
        "'127.0.0.1:2222'; each listener needs its own port",
    ]


def test_a_gcp_host_needs_the_gcp_project(tmp_path: Path) -> None:
    assert problems_of({"pairs": [pair(standby="gcp")]}, tmp_path) == [
        f"{SOURCE}: pairs[0].standby.provider = 'gcp': needs gcp.project to be set "
        "(e.g. project = 'my-project' under [gcp])"]


def test_a_pairs_entry_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    assert problems_of({"pairs": [1]}, tmp_path) == [f"{SOURCE}: pairs[0] = 1: must be a table ([[pairs]])"]


# --- Files ------------------------------------------------------------------------------------------------

GOOD_FILE = """\
health_check_interval = 5
gpu_preferred_regions = ["JP", "EU"]

[health]
probe_timeout_seconds = 2

[gcp]
project = "my-project"

[[pairs]]
name = "train"
endpoint_listen = "127.0.0.1:2222"
[pairs.primary]
provider = "vast"
[pairs.standby]
provider = "gcp"
"""


def test_a_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text(GOOD_FILE)
    config = load_config(path)
    assert config.health_check_interval == 5
    assert config.pairs[0].standby.provider == "gcp"
    assert check_config_file(path) == []


def test_problems_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text("health_check_interval = -5\n")
    assert check_config_file(path) == [
        f"{path}: health_check_interval = -5: must be a number of seconds greater than 0 and at most 604800 (e.g. 10)"]


def test_a_syntax_error_reports_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text('gpu_image = "x"\nhealth_check_interval = = 5\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: line 2, column 25: invalid TOML: ")


def test_a_syntax_error_does_not_echo_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text("[vast]\napi_key = sk-live-123\n")
    [problem] = check_config_file(path)
    assert "sk-live-123" not in problem
    assert "line 2" in problem


@pytest.mark.parametrize(("make", "problem"), [
    (lambda path: None, "no such file"),
    (lambda path: path.mkdir(), "is a directory, not a config file"),
    (lambda path: path.write_bytes(b"gpu_image = '\xff'\n"), "is not UTF-8 text (bad byte at offset 13)"),
])
def test_an_unreadable_file_gives_one_clear_problem(make: Any, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    make(path)
    assert check_config_file(path) == [f"{path}: {problem}"]
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)


# --- Writing configs --------------------------------------------------------------------------------------

AWKWARD = 'my "odd" dir\\with spaces'


def test_to_toml_round_trips_through_tomllib() -> None:
    data = {
        "text": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f café 日本',
        "path": f"/home/me/{AWKWARD}/key",
        "int": -3, "float": 0.1, "big": 1e300, "small": 5e-324, "inf": float("inf"), "yes": True, "no": False,
        "list": ["a", "b"], "numbers": [1, 2.5], "empty": [], "nested_list": [[1, 2], ["x"]],
        "odd key": 1, "": "empty key",
        "table": {"x": 1, "inner": {"y": "z"}, "empty_table": {}},
        "pairs": [{"name": "a", "primary": {"provider": "vast"}},
                  {"name": "b", "standby": {"provider": "gcp"}}],
    }
    assert tomllib.loads(to_toml(data)) == data


def test_to_toml_leaves_out_none_and_refuses_what_toml_cannot_hold() -> None:
    assert tomllib.loads(to_toml({"a": None, "b": {"c": None, "d": 1}})) == {"b": {"d": 1}}
    with pytest.raises(TypeError):
        to_toml({"a": object()})
    with pytest.raises(TypeError):
        to_toml({"a": [1, {"b": 2}]})


def test_the_defaults_write_to_toml_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text(to_toml(config_to_dict(default_config())))
    assert load_config(path) == default_config()


def test_a_config_writes_to_toml_and_reads_back_the_same(tmp_path: Path) -> None:
    folder = tmp_path / AWKWARD
    folder.mkdir()
    key = secret_file(folder, name="vast key")
    original = parse({"state_dir": str(folder / "state"), "vast": {"api_key_file": str(key)},
                      "gcp": {"project": "p"}, "gpu_max_price": 0.35,
                      "pairs": [pair("a", standby="gcp"), pair("b", "127.0.0.1:2223")]}, tmp_path)
    path = folder / "dumont.toml"
    path.write_text(to_toml(config_to_dict(original)))
    assert load_config(path) == original


def test_config_to_dict_is_json_ready_and_holds_only_file_paths(tmp_path: Path) -> None:
    key = secret_file(tmp_path, name="vast_key")
    data = config_to_dict(parse({"vast": {"api_key_file": str(key)}}, tmp_path))
    assert json.loads(json.dumps(data)) == data
    assert data["vast"]["api_key_file"] == str(key)
    assert data["gpu_preferred_regions"] == ["TH", "VN", "JP", "EU"]
    assert "not-for-your-eyes" not in json.dumps(data)


# --- Small helpers ----------------------------------------------------------------------------------------


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:2222") == ("127.0.0.1", 2222)
    assert split_host_port("[::1]:22") == ("::1", 22)
    with pytest.raises(ValueError, match="host:port"):
        split_host_port("localhost")


def test_notifications_want_every_event_by_default(tmp_path: Path) -> None:
    assert default_config().notifications.wants("failover")
    chosen = parse({"notifications": {"events": ["failover"]}}, tmp_path).notifications
    assert chosen.wants("failover")
    assert not chosen.wants("recovery_started")


# --- Hostile review #17: an empty file, absurd values, a wildcard API ---------------------------------------


def test_an_empty_file_is_refused_for_protecting_nothing(tmp_path: Path) -> None:
    [problem] = problems_of({}, tmp_path)
    assert "sets nothing, so it protects no pair: add a [[pairs]] table" in problem


@pytest.mark.parametrize(("path", "absurd"), [
    ("sync_interval_seconds", 1e308), ("failover_threshold", 99999999999999999999),
    ("health.probe_timeout_seconds", 8 * 24 * 3600.0), ("gpu_max_price", 1e9), ("gpu_min_ram_gb", 1e6),
    ("standby.disk_gb", 10**9), ("vast.bid_margin", 1e6), ("replication.keep_snapshots", 10**7),
])
def test_an_absurd_value_is_refused_with_its_range(path: str, absurd: Any, tmp_path: Path) -> None:
    [problem] = problems_of(nested(path, absurd), tmp_path)
    assert problem.startswith(f"{SOURCE}: {path} = ")
    assert " to " in problem or "at most" in problem, problem


def test_an_api_on_every_interface_is_allowed_with_a_warning(tmp_path: Path) -> None:
    from dumont.config import config_warnings

    config = parse({"controller": {"api_listen": "0.0.0.0:8787"}, "pairs": [pair()]}, tmp_path)
    [warning] = config_warnings(config)
    assert "listens on every interface" in warning and "127.0.0.1" in warning
    assert config_warnings(parse({"pairs": [pair()]}, tmp_path)) == []


def test_a_store_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    [problem] = problems_of(nested("store.url", "postgresql://dumont:hunter2@db:5432/fleet"), tmp_path)
    assert "hunter2" not in problem
    assert problem.startswith(f"{SOURCE}: store.url = 'postgresql://dumont:***@db:5432/fleet': holds a password")
    assert "DUMONT_STORE_PASSWORD" in problem


@pytest.mark.parametrize("url", ["", "sqlite:///var/lib/dumont/state.db", "postgresql://dumont@db:5432/fleet",
                                 "postgres://dumont@db.internal/fleet"])
def test_store_urls_in_either_form_are_accepted(url: str, tmp_path: Path) -> None:
    assert parse(nested("store.url", url), tmp_path).store.url == url


def test_fleet_endpoints_need_endpoint_processes_and_a_bind_needs_the_fleet_s_hosts(tmp_path: Path) -> None:
    base = {"pairs": [pair()]}
    [problem] = problems_of(merged(base, {"controller": {"endpoint_bind": "127.0.0.2"}}), tmp_path)
    assert "controller.endpoint_bind = '127.0.0.2': only a fleet's endpoints" in problem
    assert "set controller.endpoint_hosts" in problem
    [problem] = problems_of(merged(base, {"controller": {"endpoint_hosts": ["a", "b"], "endpoint": "in-process"}}),
                            tmp_path)
    assert 'an "in-process" endpoint ends with its controller' in problem
    config = parse(merged(base, {"controller": {"endpoint_hosts": ["a", "b"], "endpoint_bind": "b"}}), tmp_path)
    assert config.controller.endpoint_hosts == ("a", "b") and config.controller.endpoint_bind == "b"
