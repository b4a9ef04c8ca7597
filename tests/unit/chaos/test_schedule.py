"""A chaos plan is drawn from its seed: the same seed gives the same plan, every kind in the right shape."""

from __future__ import annotations

import itertools

import pytest

from dumont.chaos.history import FAULT_KINDS
from dumont.chaos.schedule import DURATIONS, plan
from dumont.errors import UsageError


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    first = plan(20261202, seconds=3600, pairs=["a", "b", "c"], mean_gap=30)
    assert first == plan(20261202, seconds=3600, pairs=["a", "b", "c"], mean_gap=30)
    assert first != plan(20261203, seconds=3600, pairs=["a", "b", "c"], mean_gap=30)


def test_an_hour_at_one_fault_every_30_s_has_over_100_faults_of_every_kind_on_every_pair() -> None:
    faults = plan(7, seconds=3600, pairs=["a", "b", "c"], mean_gap=30)
    assert len(faults) >= 100
    assert {f.kind for f in faults} == FAULT_KINDS and {f.pair for f in faults} == {"a", "b", "c"}
    assert all(earlier.at < later.at for earlier, later in itertools.pairwise(faults))
    assert all(0 < f.at < 3600 for f in faults)
    for fault in faults:
        low, high = DURATIONS.get(fault.kind, (0.0, 0.0))
        assert low <= fault.duration <= high, fault
        assert fault.during is None or fault.kind == "controller_kill"
    moments = {f.during for f in faults if f.kind == "controller_kill"}
    assert moments == {None, "failover", "recovery"}, "controller kills land mid-failover and mid-recovery too"


def test_a_plan_can_be_limited_to_some_kinds_and_refuses_unknown_ones() -> None:
    faults = plan(1, seconds=600, pairs=["main"], mean_gap=20, kinds=frozenset({"gpu_kill"}))
    assert faults and {f.kind for f in faults} == {"gpu_kill"}
    assert faults[0].describe().startswith("T+") and "gpu_kill on main" in faults[0].describe()
    with pytest.raises(UsageError, match="unknown fault kind"):
        plan(1, seconds=600, pairs=["main"], mean_gap=20, kinds=frozenset({"meteor"}))
    with pytest.raises(UsageError, match="at least one pair"):
        plan(1, seconds=600, pairs=[], mean_gap=20)
    with pytest.raises(UsageError, match="above 0"):
        plan(1, seconds=600, pairs=["main"], mean_gap=0)
