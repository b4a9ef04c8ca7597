"""The chaos checker: a clean history passes, and each planted violation is caught and named with its time."""

from __future__ import annotations

import dataclasses

from dumont.chaos.checker import Bounds, check, outcomes
from dumont.chaos.history import Failover, Fault, PairHistory, Protection, Record, Rental

BOUNDS = Bounds(rpo=5.0, detection=10.0, recovery=60.0)


def clean_history() -> PairHistory:
    """A GPU killed at T+100, failed over at T+104, recovered onto a new GPU by T+150; records every second."""
    history = PairHistory("main")
    history.faults.append(Fault("gpu_kill", "main", 100.0, 100.0, "vast-30000001"))
    history.failovers.append(Failover("main", 104.0, "the provider reports the GPU offline"))
    history.records = [Record("main", n, float(n)) for n in range(200)]
    history.final_records = {n for n in range(200) if not 101 <= n <= 103}  # lost in the last 5 s before failover
    history.rentals = [Rental("main", "30000001", 0.0, 150.0), Rental("main", "30000002", 110.0, None, recovery=1)]
    history.protection = [Protection("main", 50.0, True), Protection("main", 104.0, False),
                          Protection("main", 150.0, True), Protection("main", 200.0, True)]
    history.held_at_end = {"30000002", "dumont-main-standby-1"}
    return history


def rules(history: PairHistory) -> list[str]:
    return [v.rule for v in check(history, BOUNDS)]


def test_a_clean_campaign_has_no_violation_and_its_table_counts_the_fault() -> None:
    history = clean_history()
    assert check(history, BOUNDS) == []
    [kill] = outcomes(history, BOUNDS)
    assert (kill.kind, kill.count, kill.failovers, kill.back_in) == ("gpu_kill", 1, 1, [50.0])


def test_a_record_deleted_on_the_standby_is_caught_with_its_number_and_time() -> None:
    history = clean_history()
    history.final_records.discard(42)
    [violation] = check(history, BOUNDS)
    assert violation.rule == "acknowledged record lost" and violation.at == 42.0
    assert "numbers 42" in violation.detail
    assert "replay with --seed 7" in violation.describe(7)


def test_a_record_written_on_the_cpu_after_the_failover_must_survive() -> None:
    history = clean_history()
    history.final_records.discard(120)  # acknowledged by the CPU: no failover after it excuses its loss
    assert rules(history) == ["acknowledged record lost"]


def test_a_leaked_instance_is_caught() -> None:
    history = clean_history()
    history.rentals[0] = dataclasses.replace(history.rentals[0], destroyed=None)
    [violation] = check(history, BOUNDS)
    assert violation.rule == "instance left rented" and "30000001" in violation.detail


def test_a_failover_with_no_gpu_fault_before_it_is_false() -> None:
    history = clean_history()
    history.faults.append(Fault("link_degrade", "main", 300.0, 330.0, "bad"))
    history.failovers.append(Failover("main", 310.0, "the GPU failed 3 consecutive health checks"))
    history.protection.append(Protection("main", 340.0, True))
    assert rules(history) == ["failover without a fault that justifies it"]


def test_a_failover_long_after_its_fault_is_not_explained_by_it() -> None:
    history = clean_history()
    history.failovers[0] = Failover("main", 100.0 + BOUNDS.detection + 1, "late")
    assert "failover without a fault that justifies it" in rules(history)


def test_two_instances_held_at_once_by_one_recovery_is_a_double_rental() -> None:
    history = clean_history()
    history.rentals.append(Rental("main", "30000003", 120.0, 130.0, recovery=1))
    assert rules(history) == ["two rentals for one recovery"]
    history.rentals[-1] = Rental("main", "30000003", 80.0, 105.0, recovery=1)  # one after another: fine
    assert check(history, BOUNDS) == []


def test_a_torn_file_in_a_snapshot_is_a_violation() -> None:
    history = clean_history()
    history.snapshot_problems.append("seed 7, T+120: snapshot 4: writer/records.log is torn")
    assert rules(history) == ["torn or mixed-version file in a snapshot"]


def test_a_pair_not_protected_in_time_or_at_the_end_is_caught() -> None:
    history = clean_history()
    history.protection = [p for p in history.protection if p.at != 150.0]
    history.protection[-1] = Protection("main", 200.0, False)
    assert rules(history) == ["not protected again in time", "not protected at the end"]


def test_a_pair_unprotected_at_the_end_is_one_violation_not_every_record_lost() -> None:
    """Its final workspace is a dead GPU's: counting records there named thousands "lost" in a 60-minute run."""
    history = clean_history()
    history.protection[-1] = Protection("main", 200.0, False)
    history.final_records = set()
    [violation] = check(history, BOUNDS)
    assert violation.rule == "not protected at the end" and "records were not counted" in violation.detail


def test_a_fault_that_comes_before_the_last_one_recovered_rolls_the_bound_over() -> None:
    history = clean_history()
    history.faults.append(Fault("standby_preempt", "main", 140.0, 140.0, "dumont-main-standby-1"))
    history.protection = [p for p in history.protection if p.at != 150.0] + [Protection("main", 190.0, True)]
    assert check(history, BOUNDS) == []


def test_a_sample_taken_before_the_fault_was_noticed_is_not_a_recovery() -> None:
    history = clean_history()
    history.protection = [Protection("main", 50.0, True), Protection("main", 101.0, True),  # not noticed yet
                          Protection("main", 104.0, False), Protection("main", 190.0, True)]
    assert rules(history) == ["not protected again in time"]


def test_a_fault_the_pair_rode_out_counts_as_never_unprotected() -> None:
    history = clean_history()
    history.faults.append(Fault("api_errors", "main", 160.0, 170.0, "429"))
    api = next(o for o in outcomes(history, BOUNDS) if o.kind == "api_errors")
    assert api.back_in == [0.0] and api.failovers == 0


def test_a_gpu_that_changed_its_host_key_and_was_not_failed_over_from_was_trusted() -> None:
    history = clean_history()
    history.faults.append(Fault("host_key_change", "main", 160.0, 160.0, "vast-30000002"))
    assert rules(history) == ["a changed host key was not refused"]
    history.failovers.append(Failover("main", 166.0, "the GPU failed 3 consecutive health checks (host key)"))
    assert check(history, BOUNDS) == []
