"""The config's shape: one frozen dataclass per table, and the timing rules that relate their fields.

Each field carries its default and, in its metadata, the rule that checks it
(``field(default=10.0, metadata=_checked_by(_SECONDS))``) or the table it holds (``_holds(...)``), so
defaults and accepted forms live in one place; loading walks these fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, cast

from dumont.config.rules import (
    _ADDRESS,
    _ADDRESSES,
    _CIDRS,
    _EVENTS,
    _FLAG,
    _HOST,
    _HOSTS,
    _LOCAL_PATH,
    _LOGIN,
    _NETWORK_TAG,
    _PAIR_NAME,
    _REGIONS,
    _SECONDS,
    _SECRET_FILE,
    _STORE_URL,
    _TEXT,
    _WEB_URL,
    _WORKSPACE,
    ALL_EVENTS,
    _choice,
    _number,
    _provider_rule,
    _providers_rule,
    _Rule,
    _show_example,
    _when,
    _whole,
)

TerminationAction = Literal["STOP", "DELETE"]
ReplicationMode = Literal["direct", "relay"]
FenceAction = Literal["stop", "destroy"]
EndpointMode = Literal["process", "external", "in-process"]
ProviderName = str  # a provider registered in providers/registry.py


# --- Settings: each dataclass field carries its default and, in its metadata, the rule that checks it -----


@dataclass(frozen=True)
class _Setting:
    """How one key is read: by a rule (with an example for messages), or as a table / array of tables."""

    rule: _Rule | None = None
    example: object = None  # None: the field's default is the example
    table: type[Any] | None = None
    many: bool = False  # an array of tables, like [[pairs]]
    internal: bool = False  # filled by the loader, never written in the file (plug-in providers' tables)


def _checked_by(rule: _Rule, *, example: object = None) -> dict[str, _Setting]:
    return {"setting": _Setting(rule, example)}


def plugin_setting(default: Any, expected: str, is_valid: Callable[[Any], bool], *,
                   convert: Callable[[Any], Any] = lambda raw: raw) -> Any:
    """A field of a plug-in provider's ``[<name>]`` table: its default, what it must be, and the check."""
    return field(default=default, metadata=_checked_by(_when(expected, is_valid, convert)))


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
    disk_gb: int = field(default=20, metadata=_checked_by(_whole("a whole number of GB", at_least=10,
                                                                 at_most=65536)))
    image: str = field(default="projects/debian-cloud/global/images/family/debian-12",
                       metadata=_checked_by(_TEXT))
    termination_action: TerminationAction = field(default="STOP",
                                                  metadata=_checked_by(_choice(TerminationAction)))
    # Google's images refuse root over SSH; each user of the VM's ssh-keys metadata is a login with sudo.
    ssh_user: str = field(default="dumont", metadata=_checked_by(_LOGIN))
    # The VM carries this tag; a firewall rule for it opens tcp:22 to the GPU and the controller.
    network_tag: str = field(default="dumont-standby", metadata=_checked_by(_NETWORK_TAG))
    ssh_source_ranges: tuple[str, ...] = field(default=("0.0.0.0/0",), metadata=_checked_by(
        _CIDRS, example=["0.0.0.0/0"]))
    # From the insert until it runs (a spot VM may wait for capacity); SSH then gets ssh_wait_timeout.
    boot_timeout_seconds: float = field(default=600.0, metadata=_checked_by(_SECONDS))


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
    standby_disk_alert_fraction: float = field(default=0.8, metadata=_checked_by(_number(
        "a fraction", above=0, at_most=1)))
    # The scrub re-reads the standby's candidate and snapshots against their manifests, this much per round, one
    # round after a pass at most this often; a copy gone wrong is mended or sent again (hostile-review.md #6).
    scrub_interval_seconds: float = field(default=600.0, metadata=_checked_by(_SECONDS))
    scrub_mb_per_round: int = field(default=512, metadata=_checked_by(_whole("a whole number of MB", at_least=1)))
    # Change-triggered sync: the primary's agent watches the workspace (inotify, else a poll) and a pass starts
    # within change_debounce_seconds of a change; the periodic pass every sync_interval_seconds stays the net.
    on_change: bool = field(default=False, metadata=_checked_by(_FLAG))
    change_debounce_seconds: float = field(default=0.2, metadata=_checked_by(_number(
        "a number of seconds", at_least=0, at_most=3600)))
    # A pass on an unchanged workspace trusts the primary's inotify watcher and walks nothing; the whole tree is
    # still walked at least this often, for what inotify cannot see (mmap writes, network filesystems). 0: always.
    # Direct mode: a pass's files go in this many rsyncs at once, split by size, each on its own SSH connection.
    # On a 2-core machine holding both ends (bench/restore.py), two streams restored 100,000 small files in 18.1 s
    # against 23.1 s, and the 1.2 GB workspace in 8.7 s against 8.1 s; more may help where one connection's
    # cipher or TCP window is the limit (many cores, a long fat link).
    push_streams: int = field(default=1, metadata=_checked_by(_whole("a whole number of streams", at_least=1,
                                                                     at_most=16)))
    full_scan_seconds: float = field(default=300.0, metadata=_checked_by(_number(
        "a number of seconds", at_least=0, at_most=86400)))


@dataclass(frozen=True)
class HealthConfig:
    """[health]: the probes run against each host every ``health_check_interval``."""

    probe_timeout_seconds: float = field(default=5.0, metadata=_checked_by(_SECONDS))
    gpu_check_command: str | None = field(default=None, metadata=_checked_by(_TEXT, example="nvidia-smi"))
    # One probe in this many makes a fresh SSH login (and every probe after a failure, until one succeeds); the
    # others run over the host's open shared connection, which a dead or cut-off host breaks or silences, and read
    # sshd's greeting, which a stopped listener does not send. A changed host key shows at the next fresh login.
    # 1 (the default): a fresh login every time. A fleet's controller sets more (docs/fleet.md): the drill of a
    # frozen GPU detects it in 3.4 s at 5 as in 3.7 s at 1; the chaos campaigns have run at 1 only.
    fresh_login_every: int = field(default=1, metadata=_checked_by(_whole("a whole number of probes", at_least=1)))
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
    max_recoveries_per_day: int = field(default=3, metadata=_checked_by(_whole("a whole number", at_least=0)))
    # Across the fleet: at most this many recoveries rent and restore at once (0: no limit); the other failed-over
    # pairs wait on the CPU in the order they failed over. An operator's `dumont recover` does not wait.
    max_recoveries_in_flight: int = field(default=4, metadata=_checked_by(_whole("a whole number", at_least=0)))
    # A standby that cannot be created (or never becomes usable) is deleted; this bounds the retries.
    max_standby_attempts_per_hour: int = field(default=3, metadata=_checked_by(_whole("a whole number",
                                                                                      at_least=1)))
    # Readying a fresh host (find Python, install rsync with its package manager) may wait for a slow mirror.
    bootstrap_timeout_seconds: float = field(default=900.0, metadata=_checked_by(_SECONDS))
    # An outbid (paused) GPU keeps its disk: before it is destroyed, what it wrote after its last pass is copied
    # through the provider into /workspace/.dumont/salvage/<epoch>/ on the new GPU, within this deadline.
    salvage_outbid: bool = field(default=True, metadata=_checked_by(_FLAG))
    salvage_timeout_seconds: float = field(default=300.0, metadata=_checked_by(_SECONDS))
    # The users' SSH endpoints: "process" runs them in an endpoint process of their own (started if none answers),
    # so sessions survive a controller restart; "external" only connects to one started elsewhere (the
    # dumont-endpoint systemd unit); "in-process" keeps them inside the controller (its sessions end with it).
    endpoint: EndpointMode = field(default="process", metadata=_checked_by(_choice(EndpointMode)))
    endpoint_dir: Path | None = field(default=None, metadata=_checked_by(
        _LOCAL_PATH, example="/var/lib/dumont/endpoint"))
    # A fleet whose controllers each run an endpoint process serving every pair (docs/fleet.md): the host of each
    # controller's endpoints, in the order the users' ssh tries them, each on the pair's endpoint_listen port. A
    # controller's endpoint routes its own pairs and follows the store for the others; one whose controller falls
    # silent refuses new connections, so ssh goes on to the next. Empty: one endpoint per pair, at endpoint_listen.
    endpoint_hosts: tuple[str, ...] = field(default=(), metadata=_checked_by(
        _HOSTS, example=["ctl-a.internal", "ctl-b.internal"]))
    # The host this controller's endpoints listen on instead of endpoint_listen's (with endpoint_hosts: its own
    # entry there, or 0.0.0.0); it differs between the controller machines, like state_dir.
    endpoint_bind: str | None = field(default=None, metadata=_checked_by(_HOST, example="ctl-a.internal"))
    # A fleet: several controllers on one PostgreSQL store share the pairs, each pair owned through a lease of
    # this many seconds (renewed well before it runs out; a dead controller's pairs are taken after it).
    lease_seconds: float = field(default=30.0, metadata=_checked_by(_SECONDS))
    # What the controllers of a fleet share (keys, pinned host keys, the users' ssh_config snippets, and the
    # endpoint directory unless endpoint_dir names one or endpoint_hosts gives each controller its own): a
    # directory mounted on each, or a copy kept in step. None: all of it in state_dir.
    shared_dir: Path | None = field(default=None, metadata=_checked_by(_LOCAL_PATH, example="/srv/dumont/shared"))
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
    # Vast limits each endpoint (method and route) to a minimum interval between requests per account, and does
    # not publish it; the client spaces its own requests to each endpoint at least this far apart (0: not at all).
    min_request_interval_seconds: float = field(default=0.25, metadata=_checked_by(_number(
        "a number of seconds", at_least=0, at_most=60)))
    # From the rent until Vast says running: pulling an image and booting "can take 5-60 minutes depending on
    # image size" (Vast docs, choosing/templates); SSH then gets ssh_wait_timeout.
    launch_timeout_seconds: float = field(default=3600.0, metadata=_checked_by(_SECONDS))
    # An interruptible GPU bids this fraction over the offer's minimum bid (0.2: 20% more), so that it is not the
    # first to be outbid; lowered when needed so that bid + storage (dph_total) stays within gpu_max_price.
    bid_margin: float = field(default=0.2, metadata=_checked_by(_number("a fraction", at_least=0, at_most=10)))
    # Docker Hub's API, asked whether gpu_image's tag exists before a GPU is rented (an unknown tag never runs).
    image_registry_url: str = field(default="https://hub.docker.com", metadata=_checked_by(_WEB_URL))


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

    provider: ProviderName = field(metadata=_checked_by(_provider_rule(None, "a registered provider"),
                                                        example="vast"))
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
class StoreConfig:
    """[store]: where the controller keeps its state (pairs, operations, intents, passes, rented hosts, events)."""

    # "" (the default): SQLite in state_dir; or "sqlite:///PATH", or "postgresql://USER@HOST:PORT/DB" for a fleet
    # of controllers sharing one database. Its password comes from $DUMONT_STORE_PASSWORD or password_file.
    url: str = field(default="", metadata=_checked_by(_STORE_URL, example="postgresql://dumont@db:5432/dumont"))
    password_file: Path | None = field(default=None, metadata=_checked_by(_SECRET_FILE, example="~/.dumont-db"))


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
        "a price in $/h (Vast's dph_total)", above=0, at_most=1000)))
    gpu_min_ram_gb: float = field(default=8.0, metadata=_checked_by(_number("a number of GB of GPU memory",
                                                                            above=0, at_most=10000)))
    gpu_preferred_regions: tuple[str, ...] = field(default=("TH", "VN", "JP", "EU"),
                                                   metadata=_checked_by(_REGIONS))
    # The seed's image (pytorch 2.1.0, CUDA 12.1, cuDNN 8) as it is published: pytorch's tags end in -runtime or
    # -devel (research/cloud-apis.md §1.5 records this one in a real `vastai create instance` body).
    # The GPU markets a recovery rents from, in order of preference (each a provider registered as a market).
    gpu_markets: tuple[str, ...] = field(default=("vast",), metadata=_checked_by(
        _providers_rule("gpu", "GPU markets")))
    gpu_image: str = field(default="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime", metadata=_checked_by(_TEXT))
    gpu_disk_gb: int = field(default=50, metadata=_checked_by(_whole("a whole number of GB", at_least=1,
                                                                     at_most=65536)))
    # How long a running instance may take to answer SSH (the seed's 300 s); pulling the image and booting get
    # their own deadlines (vast.launch_timeout_seconds, standby.boot_timeout_seconds).
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
    store: StoreConfig = field(default_factory=StoreConfig, metadata=_holds(StoreConfig))
    pairs: tuple[PairConfig, ...] = field(default=(), metadata=_holds(PairConfig, many=True))
    # The [<name>] tables of plug-in providers (registered in providers/registry.py), read by the same loader.
    provider_tables: dict[str, Any] = field(default_factory=dict, metadata={"setting": _Setting(internal=True)})

    @property
    def detection_worst_case_seconds(self) -> float:
        """The longest a dead primary can go unnoticed: every failed check, the last one timing out."""
        return self.health_check_interval * self.failover_threshold + self.health.probe_timeout_seconds


def _known_paths(cls: type[Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for spec in fields(cls):
        setting = _setting_of(spec)
        if setting.internal:
            continue
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
    _TimingRule("health.probe_timeout_seconds", "controller.lease_seconds",
                "a lease must outlast a probe, or a controller would lose its pairs while it waits on one"),
)
