"""`dumont status` in words: a controller of a fleet says how many of the pairs it holds."""

from __future__ import annotations

from typing import Any

from dumont.cli.controller_cmd import _human_status

HEAD = {"api_url": "http://127.0.0.1:8787", "metrics_url": "m", "dashboard_url": "d"}
PAIR: dict[str, Any] = {"name": "main", "state": "syncing", "epoch": 2, "endpoint": "127.0.0.1:2222",
                        "lag_seconds": 3.0, "primary": None, "standby": None, "operation": None,
                        "reason": "the pair is protected"}


def test_a_fleet_controller_says_how_many_pairs_it_holds() -> None:
    text = _human_status({**HEAD, "controller": {"name": "vm-a1b2c3", "ticks": 9, "pairs_configured": 3},
                          "pairs": [PAIR]})
    assert "controller vm-a1b2c3 holds 1 of the 3 pairs; the other controllers hold the rest" in text
    assert "main: syncing (epoch 2)" in text


def test_a_lone_controller_says_nothing_of_leases() -> None:
    text = _human_status({**HEAD, "controller": {"name": "vm-a1b2c3", "ticks": 9, "pairs_configured": 1},
                          "pairs": [PAIR]})
    assert "holds" not in text
