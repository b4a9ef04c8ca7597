"""The drill's timing profiles and failure scenarios: the names the CLI offers, without the drill's machinery."""

from __future__ import annotations

from typing import Any

# Profiles: the seed's production values, and a fast one that fails over within seconds (SPEC §5).
FAST: dict[str, Any] = {"health_check_interval": 1, "failover_threshold": 3, "sync_interval_seconds": 2,
                        "ssh_wait_timeout": 60, "health": {"probe_timeout_seconds": 0.8},
                        "vast": {"launch_timeout_seconds": 120}, "standby": {"boot_timeout_seconds": 120}}
SEED: dict[str, Any] = {"health_check_interval": 10, "failover_threshold": 3, "sync_interval_seconds": 30,
                        "ssh_wait_timeout": 300, "health": {"probe_timeout_seconds": 5}}
PROFILES = {"fast": FAST, "seed": SEED}

SCENARIOS = ("gpu-kill", "gpu-outbid", "gpu-partition", "standby-preempt")
