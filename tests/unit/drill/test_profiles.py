"""The drill's timing profiles fitted to a link: a health probe (one fresh SSH login) must fit in its timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dumont.config import parse_config
from dumont.drill.profiles import LOGIN_LOCAL_SECONDS, LOGIN_ROUND_TRIPS, PROFILES, fit_to_link
from dumont.localcloud.link import PROFILES as LINKS
from dumont.localcloud.link import LinkSpec


def test_without_a_link_or_on_loopback_the_profile_is_unchanged() -> None:
    assert fit_to_link(PROFILES["fast"], None) is PROFILES["fast"]
    assert fit_to_link(PROFILES["fast"], LINKS["lan"]) is PROFILES["fast"]


@pytest.mark.parametrize("link", ["wan", "bad"])
@pytest.mark.parametrize("name", ["fast", "seed"])
def test_a_probe_gets_at_least_one_and_a_half_logins_and_ends_before_the_next_check(name: str, link: str) -> None:
    spec = LINKS[link]
    fitted = fit_to_link(PROFILES[name], spec)
    login = LOGIN_LOCAL_SECONDS + LOGIN_ROUND_TRIPS * spec.rtt
    timeout, interval = fitted["health"]["probe_timeout_seconds"], fitted["health_check_interval"]
    assert timeout >= 1.5 * login - 0.05
    assert timeout < interval
    assert timeout >= PROFILES[name]["health"]["probe_timeout_seconds"], "a profile is only ever stretched"
    assert fitted["failover_threshold"] == PROFILES[name]["failover_threshold"]


def test_the_fast_profile_on_a_wan_link_is_a_valid_config(tmp_path: Path) -> None:
    fitted = fit_to_link(PROFILES["fast"], LinkSpec(rtt=0.18))
    assert (fitted["health"]["probe_timeout_seconds"], fitted["health_check_interval"]) == (2.5, 3.0)
    assert PROFILES["fast"]["health"]["probe_timeout_seconds"] == 0.8, "the original is left alone"
    data: dict[str, Any] = {**fitted, "state_dir": str(tmp_path), "gcp": {"project": "test"},
                            "pairs": [{"name": "main", "endpoint_listen": "127.0.0.1:2222",
                                       "primary": {"provider": "vast", "instance_id": "1"},
                                       "standby": {"provider": "gcp"}}]}
    config = parse_config(data, source="the fitted profile", base_dir=tmp_path)  # its timing rules hold
    assert config.health.probe_timeout_seconds == 2.5
