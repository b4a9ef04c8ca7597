"""The drill's timing profiles and failure scenarios: the names the CLI offers, without the drill's machinery."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module for its names; the link relay is not needed for them
    from dumont.localcloud.link import LinkSpec

# Profiles: the seed's production values, and a fast one that fails over within seconds (SPEC §5).
FAST: dict[str, Any] = {"health_check_interval": 1, "failover_threshold": 3, "sync_interval_seconds": 2,
                        "ssh_wait_timeout": 60, "health": {"probe_timeout_seconds": 0.8},
                        "vast": {"launch_timeout_seconds": 120}, "standby": {"boot_timeout_seconds": 120}}
SEED: dict[str, Any] = {"health_check_interval": 10, "failover_threshold": 3, "sync_interval_seconds": 30,
                        "ssh_wait_timeout": 300, "health": {"probe_timeout_seconds": 5}}
PROFILES = {"fast": FAST, "seed": SEED}

# A fresh OpenSSH login that runs `true`, measured through the local cloud's links (5 logins at each RTT, 200 Mbit/s):
# 0.25 s of local work at 0 ms, then 0.94 s at 100 ms, 1.58 s at 180 ms and 2.55 s at 300 ms (7 to 8 round trips).
LOGIN_LOCAL_SECONDS = 0.25
LOGIN_ROUND_TRIPS = 8
PROBE_HEADROOM = 1.5  # a probe may take this many logins before it counts as a strike


def fit_to_link(profile: dict[str, Any], link: LinkSpec | None) -> dict[str, Any]:
    """The profile with its checks stretched so that a health probe (one fresh SSH login) finishes across ``link``.

    A stall longer than the probe timeout costs at most one strike: the next check starts after it is over, and
    a failover takes ``failover_threshold`` strikes in a row. A profile that already leaves room is unchanged.
    """
    if link is None or link.rtt <= 0:
        return profile
    login = LOGIN_LOCAL_SECONDS + LOGIN_ROUND_TRIPS * link.rtt
    timeout = max(float(profile["health"]["probe_timeout_seconds"]), round(PROBE_HEADROOM * login, 1))
    interval = max(float(profile["health_check_interval"]), float(math.ceil(timeout * 1.2)))
    return {**profile, "health_check_interval": interval, "health": {**profile["health"],
                                                                     "probe_timeout_seconds": timeout}}


SCENARIOS = ("gpu-kill", "gpu-outbid", "gpu-partition", "standby-preempt")
