"""`dumont config check` and `dumont config defaults`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def dumont(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dumont", *args], check=False, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_defaults_are_the_seeds_recommended_values() -> None:
    result = dumont("config", "defaults", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["sync_interval_seconds"] == 30 and data["health_check_interval"] == 10
    assert data["failover_threshold"] == 3 and data["auto_failover"] and data["auto_recovery"]
    assert data["gpu_max_price"] == 0.5 and data["gpu_preferred_regions"] == ["TH", "VN", "JP", "EU"]
    assert data["standby"]["machine_type"] == "e2-medium" and data["gcp_spot"] is True


def test_a_good_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text('sync_interval_seconds = 15\n[[pairs]]\nname = "main"\nendpoint_listen = "127.0.0.1:2222"\n'
                    '[pairs.primary]\nprovider = "vast"\n[pairs.standby]\nprovider = "vast"\n')
    result = dumont("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_every_problem_is_reported_with_exit_2_and_secrets_are_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    original = ('health_check_interval = -5\nfailover_threshold = "three"\nsync_interval = 30\n'
                '[vast]\napi_key = "sk-live-abcdef"\n')
    path.write_text(original)
    result = dumont("config", "check", str(path))
    assert result.returncode == 2
    err = result.stderr
    assert "health_check_interval = -5" in err
    assert "failover_threshold" in err and "three" in err
    assert "did you mean sync_interval_seconds" in err
    assert "vast.api_key" in err and "sk-live-abcdef" not in err + result.stdout
    assert path.read_text() == original, "checking never changes the file"


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = dumont("config", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_an_api_on_every_interface_passes_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text('[controller]\napi_listen = "0.0.0.0:8787"\n[[pairs]]\nname = "main"\n'
                    'endpoint_listen = "127.0.0.1:2222"\n[pairs.primary]\nprovider = "vast"\n'
                    '[pairs.standby]\nprovider = "vast"\n')
    result = dumont("config", "check", str(path), "--json")
    assert result.returncode == 0, result.stderr
    [warning] = json.loads(result.stdout)["warnings"]
    assert "listens on every interface" in warning


def test_an_empty_file_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text("")
    result = dumont("config", "check", str(path))
    assert result.returncode == 2 and "protects no pair" in result.stderr


def test_a_local_host_name_that_is_a_path_is_refused_before_anything_is_asked(tmp_path: Path) -> None:
    """hostile-review.md #18: `local kill 'vast-1/../gcp-…-standby-1'` killed the standby."""
    for name in ("vast-30000005/../gcp-dumont-main-standby-1", "../../etc"):
        result = dumont("local", "kill", name, "--state-dir", str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "is not usable as an SSH alias" in result.stderr and "Traceback" not in result.stderr
