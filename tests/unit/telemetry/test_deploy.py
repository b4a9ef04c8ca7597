"""The shipped Prometheus rules, scrape config and Grafana dashboard: valid for promtool, and only our metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dumont.telemetry.metrics import METRICS

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dumont.json"
KNOWN = {spec.name for spec in METRICS}
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `make system-deps` (Debian package `prometheus`)")
    return subprocess.run([path, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=60)


def metric_names(text: str) -> set[str]:
    """The dumont_* series a query text refers to, histogram series folded to their metric."""
    return {HISTOGRAM_SERIES.sub("", name) if HISTOGRAM_SERIES.sub("", name) in KNOWN else name
            for name in re.findall(r"\bdumont_[a-z_]+", text)}


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml", cwd=ALERTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_seed_s_alerts_are_all_there() -> None:
    """Sync failures > 3, health checks > 5, more than one recovery a day, disk > 80%, SSH, GPU price."""
    text = ALERTS.read_text()
    for alert in ("DumontSyncFailures", "DumontHealthCheckFailures", "DumontRepeatedRecoveries",
                  "DumontStandbyDiskFull", "DumontSshProbeFlaky", "DumontEndpointConnectFailures",
                  "DumontGpuPriceAboveMax", "DumontGpuPriceSpike", "DumontStandbyLagHigh", "DumontPairFailedOver"):
        assert f"alert: {alert}\n" in text, alert
    assert metric_names(text) <= KNOWN, metric_names(text) - KNOWN


def test_the_scrape_config_is_valid_with_a_token_file(tmp_path: Path) -> None:
    token = tmp_path / "api_token"
    token.write_text("token\n")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "credentials_file: /var/lib/prometheus/dumont_api_token" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/var/lib/prometheus/dumont_api_token", str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return queries


def test_the_grafana_dashboard_queries_parse_and_use_only_our_metrics(tmp_path: Path) -> None:
    """Every panel query is valid PromQL (promtool parses it as a recording rule) over metrics we export."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = set().union(*(metric_names(q) for q in queries))
    assert used <= KNOWN, used - KNOWN
    for needed in ("dumont_pair_state", "dumont_standby_lag_seconds", "dumont_cost_dollars_total",
                   "dumont_gpu_price_dollars_per_hour", "dumont_failovers_total", "dumont_standby_disk_used_ratio"):
        assert needed in used, needed
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dumont:panel_query_{n}", "expr": _concrete(q)} for n, q in enumerate(queries)]}]}
    (tmp_path / "queries.yml").write_text(json.dumps(rules))  # JSON is YAML
    checked = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _concrete(query: str) -> str:
    """A panel query with Grafana's variables replaced by values Prometheus accepts."""
    return query.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$pair", ".*")


def test_the_grafana_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "dumont-standby" and dashboard["title"] == "Dumont Standby"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pair"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], f"panel {panel['title']!r} does not say what it shows"
