"""The metric table and what a scrape shows: units in names, state read at scrape time, counters fed by events."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from dumont.core.model import (
    Health,
    HostHealth,
    Memory,
    Observation,
    OperationStatus,
    PairState,
    ProbeResult,
    SyncStatus,
)
from dumont.telemetry.metrics import METRICS, Metrics
from dumont.telemetry.sampler import DiskSample, GpuPrice, Sampler
from tests.unit.telemetry.conftest import Clock, FakeController

# Base units, or for unitless values the thing counted (Prometheus naming: units in names, no prefixes).
UNITS = ("_seconds", "_bytes", "_dollars_per_hour", "_ratio", "_files", "_failures", "_info", "_epoch", "_state",
         "_active", "_running", "_held", "_up", "_parked", "_last_day", "_success")


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of an exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        found_name, _, rest = metric.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if found_name == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def test_every_metric_is_named_with_its_unit_and_described_in_one_sentence() -> None:
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names)), "a metric is declared twice"
    for spec in METRICS:
        assert re.fullmatch(r"dumont_[a-z_]+", spec.name), spec.name
        if spec.kind == "counter":
            assert spec.name.endswith("_total"), spec.name
        else:
            assert not spec.name.endswith("_total"), spec.name
            assert spec.name.endswith(UNITS), f"{spec.name} does not say its unit"
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and spec.buckets == tuple(sorted(spec.buckets)), spec.name
        assert spec.help.endswith(".") and (spec.help[0].isupper() or spec.help[0].isdigit()), spec.name


def test_the_spec_s_metrics_are_all_there() -> None:
    """SPEC §4.8: sync duration and bytes, last good sync, lag, probes, detection, failovers, recoveries and their
    duration, pair state, standby disk, GPU price and running cost."""
    names = {spec.name for spec in METRICS}
    assert names >= {
        "dumont_sync_duration_seconds", "dumont_sync_sent_bytes_total", "dumont_sync_last_success_timestamp_seconds",
        "dumont_standby_lag_seconds", "dumont_probe_success", "dumont_failover_detection_seconds",
        "dumont_failovers_total", "dumont_recoveries_total", "dumont_recovery_duration_seconds", "dumont_pair_state",
        "dumont_standby_disk_used_ratio", "dumont_gpu_price_dollars_per_hour", "dumont_cost_dollars_total",
    }


def synced_observation(clock: Clock) -> Observation:
    probes = (ProbeResult("tcp", Health.OK, "", 0.01), ProbeResult("ssh", Health.FAIL, "timeout", 0.8),
              ProbeResult("command", Health.UNKNOWN))
    gpu = HostHealth(None, "", probes)
    return Observation(clock.now, PairState.SYNCING, True, gpu, None, True, SyncStatus(), None)


def test_a_scrape_reads_the_pair_as_it_is_now(controller: FakeController, clock: Clock) -> None:
    """Given a synced pair with a pass 12 s ago, one failed SSH probe, an alert and sampled disk and price, a scrape
    shows each of them, and never a probe that could not tell."""
    rt = controller.pairs["main"]
    sampler = Sampler(controller.ctx, controller.pairs)
    metrics = Metrics(controller, sampler)  # type: ignore[arg-type]
    rt.sync = SyncStatus(last_good_at=clock.now - 12, consecutive_failures=0)
    rt.memory = Memory(primary_failures=1, alerted=frozenset({"sync_failures"}))
    rt.observation = synced_observation(clock)
    samples = sampler.pair("main")
    samples.disk = DiskSample("standby-1", 25, 100, clock.now)
    samples.gpu_price = GpuPrice("7001", 0.3, 0.3)
    samples.charge("gpu", 0.36, clock.now - 3600)
    controller.ticks = 42

    text = metrics.render().decode()

    assert sample(text, "dumont_pair_state", pair="main", state="syncing") == 1
    assert sample(text, "dumont_pair_state", pair="main", state="failed_over") == 0
    assert sample(text, "dumont_standby_lag_seconds", pair="main") == 12
    assert sample(text, "dumont_probe_success", pair="main", role="primary", probe="ssh") == 0
    assert sample(text, "dumont_probe_success", pair="main", role="primary", probe="tcp") == 1
    assert sample(text, "dumont_probe_success", pair="main", role="primary", probe="command") is None
    assert sample(text, "dumont_health_check_consecutive_failures", pair="main", role="primary") == 1
    assert sample(text, "dumont_alert_active", pair="main", alert="sync_failures") == 1
    assert sample(text, "dumont_standby_disk_used_ratio", pair="main") == 0.75
    assert sample(text, "dumont_gpu_price_dollars_per_hour", pair="main", instance_id="7001") == 0.3
    assert sample(text, "dumont_cost_dollars_total", pair="main", machine="gpu") == pytest.approx(0.36)
    assert sample(text, "dumont_pair_host_info", pair="main", role="standby", machine="cpu", provider="gcp",
                  instance_id="standby-1") == 1
    assert sample(text, "dumont_controller_ticks_total") == 42
    assert sample(text, "dumont_controller_network_up") == 1
    assert sample(text, "dumont_endpoint_connections_total", pair="main") == 0
    assert "_created" not in text


def test_passes_are_counted_once_from_the_store(controller: FakeController, clock: Clock) -> None:
    """Passes recorded before the metrics started are history; each later one is counted at the next scrape."""
    store = controller.ctx.store
    store.record_pass("main", _pass(1, clock.now - 100, 2.0, 10))
    metrics = Metrics(controller)  # type: ignore[arg-type]
    store.record_pass("main", _pass(2, clock.now - 50, 0.5, 1000))
    store.record_pass("main", _pass(3, clock.now - 20, 1.5, 24))

    first, second = metrics.render().decode(), metrics.render().decode()

    for text in (first, second):
        assert sample(text, "dumont_sync_passes_total", pair="main") == 2
        assert sample(text, "dumont_sync_sent_bytes_total", pair="main") == 1024
        assert sample(text, "dumont_sync_duration_seconds_sum", pair="main") == 2.0
        assert sample(text, "dumont_sync_duration_seconds_bucket", pair="main", le="1.0") == 1
        assert sample(text, "dumont_sync_scanned_bytes", pair="main") == 4096


def _pass(seq: int, finished: float, seconds: float, sent: int) -> dict[str, object]:
    return {"epoch": 1, "seq": seq, "snapshot_seq": seq, "started_at": finished - seconds, "finished_at": finished,
            "files_scanned": 3, "bytes_scanned": 4096, "bytes_sent": sent, "copied": True, "deferred": []}


def test_a_failover_and_a_recovery_are_counted_and_timed(controller: FakeController, clock: Clock) -> None:
    """Detection runs from the first failed check (the move to degraded) to the decision; the switch time comes
    from the failover event; the recovery from its start to the failback."""
    metrics = Metrics(controller)  # type: ignore[arg-type]
    controller.ctx.listeners.append(metrics.on_event)
    rt = controller.pairs["main"]
    controller.event("main", "state", "GPU check failed (1/3)", {"from": "syncing", "to": "degraded"})
    clock.advance(2.0)
    rt.timings["decided_at"] = clock.now
    controller.event("main", "failover", "failed over to the standby: ...", {"decision_to_switch_seconds": 0.25})
    controller.event("main", "recovery_started", "renting a new GPU")
    clock.advance(300)
    controller.event("main", "recovered", "failed back to the new GPU")
    controller.event("main", "state", "recovery failed (x)", {"from": "recovering", "to": "failed_over"})

    text = metrics.render().decode()

    assert sample(text, "dumont_failovers_total", pair="main") == 1
    assert sample(text, "dumont_failover_detection_seconds_sum", pair="main") == 2.0
    assert sample(text, "dumont_failover_switch_seconds_sum", pair="main") == 0.25
    assert sample(text, "dumont_recovery_duration_seconds_sum", pair="main") == 300
    assert sample(text, "dumont_recoveries_total", pair="main", outcome="succeeded") == 1
    assert sample(text, "dumont_recoveries_total", pair="main", outcome="failed") == 1
    assert sample(text, "dumont_events_total", pair="main", kind="state") == 2


def test_a_failover_the_provider_decided_at_once_has_zero_detection(controller: FakeController,
                                                                     clock: Clock) -> None:
    metrics = Metrics(controller)  # type: ignore[arg-type]
    controller.ctx.listeners.append(metrics.on_event)
    controller.pairs["main"].timings["decided_at"] = clock.now
    controller.event("main", "failover", "the provider reports the GPU offline", {})

    text = metrics.render().decode()

    assert sample(text, "dumont_failover_detection_seconds_sum", pair="main") == 0
    assert sample(text, "dumont_failover_detection_seconds_count", pair="main") == 1


def test_promtool_accepts_a_scrape_of_a_busy_pair(controller: FakeController, clock: Clock) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run `make system-deps` (Debian package `prometheus`)")
    metrics = Metrics(controller, Sampler(controller.ctx, controller.pairs))  # type: ignore[arg-type]
    controller.ctx.listeners.append(metrics.on_event)
    rt = controller.pairs["main"]
    rt.observation = synced_observation(clock)
    rt.sync = SyncStatus(last_good_at=clock.now - 3)
    rt.operation = OperationStatus("recovery", "restoring", clock.now - 30)
    controller.event("main", "failover", "failed over", {"decision_to_switch_seconds": 0.1})
    metrics.on_notification("failover", "sent")

    result = subprocess.run([promtool, "check", "metrics"], input=metrics.render(), capture_output=True, check=False)

    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr

