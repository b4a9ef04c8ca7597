"""The Dumont config file: its TOML shape, its defaults, and the checks run when it is loaded.

A config protecting one pair (every key is optional except inside ``[[pairs]]``)::

    health_check_interval = 10          # top-level keys: timing, failover and GPU rental
    gpu_preferred_regions = ["TH", "VN", "JP", "EU"]

    [standby]                           # and [replication] [health] [controller] [notifications] [store]
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

Each table is a frozen dataclass in ``schema``. Each field carries its default and, in its metadata, the
rule that checks it (``field(default=10.0, metadata=_checked_by(_SECONDS))``, the rules being in
``rules``), so defaults and accepted forms live in one place. Loading (``loading``) collects every problem
-- bad values, unknown keys (with the closest known key), secrets written in the text, secret files that
others can read, broken timing rules -- and raises one ``ConfigError`` that lists them all. Secrets never
enter the config, only the paths of the 0600 files that hold them. ``toml`` writes a config back out.
"""

from dumont.config.loading import check_config_file, config_warnings, default_config, load_config, parse_config
from dumont.config.rules import ALL_EVENTS, REGION_NAMES, split_host_port
from dumont.config.schema import (
    Config,
    ControllerConfig,
    FenceAction,
    GcpConfig,
    HealthConfig,
    InstanceConfig,
    NotificationsConfig,
    PairConfig,
    ProviderName,
    ReplicationConfig,
    ReplicationMode,
    StandbyConfig,
    StoreConfig,
    TerminationAction,
    VastConfig,
    plugin_setting,
)
from dumont.config.toml import config_to_dict, to_toml

__all__ = [
    "ALL_EVENTS",
    "REGION_NAMES",
    "Config",
    "ControllerConfig",
    "FenceAction",
    "GcpConfig",
    "HealthConfig",
    "InstanceConfig",
    "NotificationsConfig",
    "PairConfig",
    "ProviderName",
    "ReplicationConfig",
    "ReplicationMode",
    "StandbyConfig",
    "StoreConfig",
    "TerminationAction",
    "VastConfig",
    "check_config_file",
    "config_to_dict",
    "config_warnings",
    "default_config",
    "load_config",
    "parse_config",
    "plugin_setting",
    "split_host_port",
    "to_toml",
]
