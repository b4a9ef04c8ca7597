"""Prometheus metrics (SPEC §4.8): one table of descriptors, counters fed by events, gauges read at scrape time.

Two sources feed the exposition. Controller events (failover, recovered, state changes) update counters and
histograms as they happen. Everything else is read from the controller's current state when Prometheus scrapes:
pair state, epoch, lag, probe results, relay counters, and the last values the :class:`Sampler` took from the
hosts and providers (a scrape never calls a host). Every metric carries its unit in its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from dumont.core.model import Health, PairState
from dumont.core.pair import rpo_estimate

if TYPE_CHECKING:
    from dumont.core.controller import Controller
    from dumont.core.pair import PairRuntime
    from dumont.telemetry.sampler import Sampler

# Prometheus 2.x reads this classic text format; prometheus_client's default now announces version 1.0.0.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

Kind = Literal["gauge", "counter", "histogram"]
Source = Literal["state", "event"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name (unit included), type, meaning and labels, and what feeds it."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    source: Source = "state"  # "state": read at scrape time; "event": updated by controller events
    buckets: tuple[float, ...] = ()


P = ("pair",)
METRICS: tuple[MetricSpec, ...] = (
    # --- the pair
    MetricSpec("dumont_pair_state", "gauge", "1 for the state the pair is in, 0 for the others.", (*P, "state")),
    MetricSpec("dumont_pair_epoch", "gauge", "The pair's epoch: it grows by one every time the primary changes.", P),
    MetricSpec("dumont_pair_host_info", "gauge", "1 for each machine of the pair, with its role and identity.",
               (*P, "role", "machine", "provider", "instance_id")),
    MetricSpec("dumont_alert_active", "gauge", "1 while an alert of this kind is raised and not cleared.",
               (*P, "alert")),
    MetricSpec("dumont_operation_running", "gauge", "1 while a long operation (recovery, standby replacement) runs.",
               (*P, "operation", "step")),
    # --- replication
    MetricSpec("dumont_standby_lag_seconds", "gauge",
               "Seconds since the last complete pass ended: the data a failover now would lose (RPO estimate).", P),
    MetricSpec("dumont_rpo_estimate_seconds", "gauge",
               "What a failover now would lose: with change-triggered sync the age of the oldest change not yet "
               "committed (0: none pending), else the lag.", P),
    MetricSpec("dumont_sync_last_success_timestamp_seconds", "gauge", "Unix time the last complete pass ended.", P),
    MetricSpec("dumont_sync_consecutive_failures", "gauge", "Replication passes failed in a row (0 after a success).",
               P),
    MetricSpec("dumont_sync_duration_seconds", "histogram", "Wall time of each complete replication pass.", P,
               "event", (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)),
    MetricSpec("dumont_sync_passes_total", "counter", "Complete replication passes.", P, "event"),
    MetricSpec("dumont_sync_sent_bytes_total", "counter", "Bytes replication passes sent to the standby.", P,
               "event"),
    MetricSpec("dumont_sync_scanned_bytes", "gauge", "Size of the workspace the last complete pass scanned.", P),
    MetricSpec("dumont_sync_scanned_files", "gauge", "Files in the workspace the last complete pass scanned.", P),
    # --- failure detection
    MetricSpec("dumont_probe_success", "gauge", "1 if the probe passed at the last check, 0 if it failed "
               "(absent when it could not tell).", (*P, "role", "probe")),
    MetricSpec("dumont_probe_duration_seconds", "gauge", "How long the probe took at the last check.",
               (*P, "role", "probe")),
    MetricSpec("dumont_health_check_consecutive_failures", "gauge", "Health checks failed in a row, per role.",
               (*P, "role")),
    MetricSpec("dumont_controller_network_up", "gauge", "1 if the controller reached its network targets at the last "
               "check, 0 if not (it suspends judgement then).", ()),
    MetricSpec("dumont_controller_ticks_total", "counter", "Observe-decide-act cycles of the controller loop.", ()),
    MetricSpec("dumont_controller_last_tick_age_seconds", "gauge", "Seconds since the loop last started a tick "
               "(grows without bound when the loop is stuck).", ()),
    MetricSpec("dumont_internal_errors_total", "counter", "Unexpected exceptions the controller caught and went on "
               "from (each distinct one is also an internal_error event).", ()),
    # --- failover and recovery
    MetricSpec("dumont_failovers_total", "counter", "Failovers to the standby.", P, "event"),
    MetricSpec("dumont_failover_detection_seconds", "histogram",
               "From the first failed check of the streak to the failover decision (0: the provider said so, or "
               "the first check decided).", P, "event", (0, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)),
    MetricSpec("dumont_failover_switch_seconds", "histogram",
               "From the failover decision to the endpoint serving the standby.", P, "event",
               (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)),
    MetricSpec("dumont_recoveries_total", "counter", "Recoveries that ended, by outcome (succeeded or failed).",
               (*P, "outcome"), "event"),
    MetricSpec("dumont_recovery_duration_seconds", "histogram", "From a recovery's start to the failback.", P,
               "event", (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)),
    MetricSpec("dumont_recoveries_started_last_day", "gauge", "Recoveries started in the last 24 hours.", P),
    MetricSpec("dumont_standby_replacements_total", "counter", "Standbys created and fully synced.", P, "event"),
    # --- the standby's disk
    MetricSpec("dumont_standby_disk_used_ratio", "gauge",
               "Used share of the CPU machine's data disk (the standby, or the primary while failed over).", P),
    MetricSpec("dumont_standby_disk_free_bytes", "gauge", "Free bytes on the CPU machine's data disk.", P),
    MetricSpec("dumont_standby_disk_alert_threshold_ratio", "gauge",
               "The used share above which the disk alert fires (replication.standby_disk_alert_fraction).", P),
    # --- money
    MetricSpec("dumont_gpu_price_dollars_per_hour", "gauge", "What the GPU serving the pair costs, as its provider "
               "reports it.", (*P, "instance_id")),
    MetricSpec("dumont_gpu_max_price_dollars_per_hour", "gauge", "The most a recovery may pay (gpu_max_price).", P),
    MetricSpec("dumont_cost_dollars_total", "counter", "Money spent on the pair's machines since the controller "
               "started (machines whose provider reports a price).", (*P, "machine")),
    # --- the stable endpoint
    MetricSpec("dumont_endpoint_connections_active", "gauge", "Connections relayed to the primary now.", P),
    MetricSpec("dumont_endpoint_connections_parked", "gauge", "Connections waiting for a target or a release.", P),
    MetricSpec("dumont_endpoint_held", "gauge", "1 while the endpoint holds new connections (failback catch-up).", P),
    MetricSpec("dumont_endpoint_connections_total", "counter", "Connections the endpoint accepted.", P),
    MetricSpec("dumont_endpoint_failed_connects_total", "counter", "Connections the endpoint could not forward.", P),
    MetricSpec("dumont_endpoint_hold_timeouts_total", "counter", "Parked connections closed after hold_timeout.", P),
    MetricSpec("dumont_endpoint_received_bytes_total", "counter", "Bytes from users to the primary.", P),
    MetricSpec("dumont_endpoint_sent_bytes_total", "counter", "Bytes from the primary to users.", P),
    # --- the controller's own record
    MetricSpec("dumont_events_total", "counter", "Events recorded in the event log, by kind.", (*P, "kind"), "event"),
    MetricSpec("dumont_notifications_total", "counter", "Notifications by event and outcome (sent, failed).",
               ("event", "outcome"), "event"),
)
SPECS = {spec.name: spec for spec in METRICS}


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family for a scrape-time metric of the table."""
    spec = SPECS[name]
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(name, spec.help, labels=spec.labels)


class Metrics:
    """The controller's metrics in a registry of their own (never the process-global one)."""

    def __init__(self, controller: Controller, sampler: Sampler | None = None) -> None:
        self.controller = controller
        self.sampler = sampler
        # A ``*_created`` gauge beside every counter doubles the exposition for no reader of ours (the switch is
        # process-wide; this process has no other registry).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for spec in METRICS:
            if spec.source != "event":
                continue
            if spec.kind == "counter":
                self._counters[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            else:
                self._histograms[spec.name] = Histogram(spec.name, spec.help, spec.labels, registry=self.registry,
                                                        buckets=spec.buckets)
        self.registry.register(_StateCollector(self))
        self._first_failed_at: dict[str, float] = {}
        self._recovery_started_at: dict[str, float] = {}
        store = controller.ctx.store
        # Passes before this controller started are history, not news: counters start from here.
        self._passes_seen = {name: (last["finished_at"] if (last := store.last_pass(name)) else 0.0)
                             for name in controller.pairs}

    def render(self) -> bytes:
        """The exposition text of every metric, as ``GET /metrics`` serves it."""
        self._absorb_passes()
        return generate_latest(self.registry)

    def count(self, name: str, *labels: str, amount: float = 1.0) -> None:
        """Add to an event counter of the table."""
        self._counters[name].labels(*labels).inc(amount)

    def on_notification(self, event: str, outcome: str) -> None:
        """Count a notification's outcome (the notifier calls this)."""
        self.count("dumont_notifications_total", event, outcome)

    def on_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        """Update the event-fed metrics (a ``ControllerContext`` listener)."""
        self.count("dumont_events_total", pair or "", kind)
        if pair is None:
            return
        now = self.controller.ctx.clock()
        if kind == "state":
            self._on_state(pair, str(data.get("from")), str(data.get("to")), now)
        elif kind == "failover":
            self._on_failover(pair, data, now)
        elif kind in ("recovery_started", "recovery_resumed"):
            rt = self.controller.pairs.get(pair)
            op = rt.operation if rt is not None else None
            self._recovery_started_at[pair] = op.started_at if op is not None and op.kind == "recovery" else now
        elif kind == "recovered":
            self.count("dumont_recoveries_total", pair, "succeeded")
            started = self._recovery_started_at.pop(pair, None)
            if started is not None:
                self._histograms["dumont_recovery_duration_seconds"].labels(pair).observe(max(0.0, now - started))
        elif kind == "standby_replaced":
            self.count("dumont_standby_replacements_total", pair)

    def _on_state(self, pair: str, previous: str, new: str, now: float) -> None:
        if new == PairState.DEGRADED and previous == PairState.SYNCING:
            self._first_failed_at[pair] = now  # the tick that saw the first failed check
        elif new == PairState.SYNCING:
            self._first_failed_at.pop(pair, None)
        elif previous == PairState.RECOVERING and new == PairState.FAILED_OVER:
            self.count("dumont_recoveries_total", pair, "failed")
            self._recovery_started_at.pop(pair, None)

    def _on_failover(self, pair: str, data: dict[str, Any], now: float) -> None:
        self.count("dumont_failovers_total", pair)
        switch = data.get("decision_to_switch_seconds")
        if isinstance(switch, int | float):
            self._histograms["dumont_failover_switch_seconds"].labels(pair).observe(float(switch))
        rt = self.controller.pairs.get(pair)
        decided = rt.timings.get("decided_at", now) if rt is not None else now
        first = self._first_failed_at.pop(pair, decided)
        self._histograms["dumont_failover_detection_seconds"].labels(pair).observe(max(0.0, decided - first))

    def _absorb_passes(self) -> None:
        """Count the passes completed since the last scrape (they are recorded in the store, not announced)."""
        store = self.controller.ctx.store
        for name in self.controller.pairs:
            for row in store.passes_since(name, self._passes_seen.get(name, 0.0)):
                self._histograms["dumont_sync_duration_seconds"].labels(name).observe(
                    max(0.0, row["finished_at"] - row["started_at"]))
                self.count("dumont_sync_passes_total", name)
                self.count("dumont_sync_sent_bytes_total", name, amount=float(row["bytes_sent"]))
                self._passes_seen[name] = row["finished_at"]


class _StateCollector:
    """Reads the controller's current state at scrape time (never calls a host)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        """The scrape-time families (so the registry can refuse duplicates up front)."""
        return [family(spec.name) for spec in METRICS if spec.source == "state"]

    def collect(self) -> Iterator[Metric]:
        """One family per scrape-time metric of the table, in table order."""
        families = {spec.name: family(spec.name) for spec in METRICS if spec.source == "state"}
        controller = self.metrics.controller
        families["dumont_controller_ticks_total"].add_metric([], controller.ticks)
        if controller.last_tick_at is not None:
            families["dumont_controller_last_tick_age_seconds"].add_metric(
                [], max(0.0, controller.ctx.clock() - controller.last_tick_at))
        families["dumont_internal_errors_total"].add_metric([], controller.ctx.internal_errors.total)
        network = [rt.observation.network_ok for rt in controller.pairs.values()
                   if rt.observation is not None and rt.observation.network_ok is not None]
        if network:
            families["dumont_controller_network_up"].add_metric([], float(all(network)))
        for rt in controller.pairs.values():
            _pair_metrics(families, self.metrics, rt)
        yield from families.values()


Families = dict[str, GaugeMetricFamily | CounterMetricFamily]


def _add(families: Families, name: str, labels: list[str], value: float) -> None:
    families[name].add_metric(labels, value)


def _pair_metrics(families: Families, metrics: Metrics, rt: PairRuntime) -> None:
    """Every scrape-time metric of one pair."""
    ctx, name = metrics.controller.ctx, rt.name
    now = ctx.clock()
    for state in PairState:
        _add(families, "dumont_pair_state", [name, str(state)], float(rt.state == state))
    _add(families, "dumont_pair_epoch", [name], rt.epoch)
    for role, ref in (("primary", rt.primary), ("standby", rt.standby)):
        if ref is not None:
            _add(families, "dumont_pair_host_info", [name, role, ref.role, ref.provider, ref.instance_id], 1)
    sampled = metrics.sampler.pair(name) if metrics.sampler is not None else None
    for alert in sorted(rt.memory.alerted | (sampled.alerts if sampled else set())):
        _add(families, "dumont_alert_active", [name, alert], 1)
    if rt.operation is not None and not rt.operation.finished:
        _add(families, "dumont_operation_running", [name, rt.operation.kind, rt.operation.step], 1)
    _sync_metrics(families, metrics, rt, now)
    _probe_metrics(families, rt)
    _add(families, "dumont_recoveries_started_last_day", [name],
         ctx.store.operations_since(name, "recovery", now - 86_400))
    _add(families, "dumont_standby_disk_alert_threshold_ratio", [name],
         ctx.config.replication.standby_disk_alert_fraction)
    _add(families, "dumont_gpu_max_price_dollars_per_hour", [name], ctx.config.gpu_max_price)
    if sampled is not None:
        if sampled.disk is not None:
            _add(families, "dumont_standby_disk_used_ratio", [name], sampled.disk.used_ratio)
            _add(families, "dumont_standby_disk_free_bytes", [name], sampled.disk.free_bytes)
        if sampled.gpu_price is not None:
            _add(families, "dumont_gpu_price_dollars_per_hour", [name, sampled.gpu_price.instance_id],
                 sampled.gpu_price.price)
        for machine, dollars in sorted(sampled.cost_dollars(now).items()):
            _add(families, "dumont_cost_dollars_total", [name, machine], dollars)
    _relay_metrics(families, rt)


def _sync_metrics(families: Families, metrics: Metrics, rt: PairRuntime, now: float) -> None:
    name = rt.name
    if rt.sync.last_good_at is not None:
        _add(families, "dumont_standby_lag_seconds", [name], max(0.0, now - rt.sync.last_good_at))
        _add(families, "dumont_sync_last_success_timestamp_seconds", [name], rt.sync.last_good_at)
    rpo = rpo_estimate(rt, now, on_change=metrics.controller.ctx.config.replication.on_change)
    if rpo is not None:
        _add(families, "dumont_rpo_estimate_seconds", [name], rpo)
    _add(families, "dumont_sync_consecutive_failures", [name], rt.sync.consecutive_failures)
    last = metrics.controller.ctx.store.last_pass(name)
    if last is not None:
        _add(families, "dumont_sync_scanned_bytes", [name], last["bytes"])
        _add(families, "dumont_sync_scanned_files", [name], last["files"])


def _probe_metrics(families: Families, rt: PairRuntime) -> None:
    name = rt.name
    _add(families, "dumont_health_check_consecutive_failures", [name, "primary"], rt.memory.primary_failures)
    _add(families, "dumont_health_check_consecutive_failures", [name, "standby"], rt.memory.standby_failures)
    observation = rt.observation
    if observation is None:
        return
    for role, health in (("primary", observation.primary), ("standby", observation.standby)):
        for probe in health.probes if health is not None else ():
            if probe.health != Health.UNKNOWN:
                _add(families, "dumont_probe_success", [name, role, probe.name], float(probe.health == Health.OK))
            _add(families, "dumont_probe_duration_seconds", [name, role, probe.name], probe.seconds)


def _relay_metrics(families: Families, rt: PairRuntime) -> None:
    name, stats = rt.name, rt.endpoint.stats()
    for metric, value in (("dumont_endpoint_connections_active", stats.active),
                          ("dumont_endpoint_connections_parked", stats.parked),
                          ("dumont_endpoint_held", float(stats.held)),
                          ("dumont_endpoint_connections_total", stats.accepted),
                          ("dumont_endpoint_failed_connects_total", stats.failed_connects),
                          ("dumont_endpoint_hold_timeouts_total", stats.timed_out),
                          ("dumont_endpoint_received_bytes_total", stats.bytes_in),
                          ("dumont_endpoint_sent_bytes_total", stats.bytes_out)):
        _add(families, metric, [name], value)
