"""decide() as tables: (observation, memory) -> (actions, reason). Every state is covered."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dumont.core.decide import decide, next_pass_at, recovery_turns
from dumont.core.model import (
    Alert,
    ConsumeIntent,
    Decision,
    FailOver,
    Health,
    HostHealth,
    Intent,
    Memory,
    Observation,
    OperationStatus,
    PairState,
    Policy,
    ProbeResult,
    ReplaceStandby,
    RunSync,
    SetState,
    StartRecovery,
    SyncStatus,
)
from dumont.providers.base import InstanceState

NOW = 1_000_000.0
POLICY = Policy(failover_threshold=3, sync_interval=30)


def healthy() -> HostHealth:
    return HostHealth(InstanceState.RUNNING, "running", (ProbeResult("tcp", Health.OK), ProbeResult("ssh", Health.OK)))


def failing(detail: str = "connection refused") -> HostHealth:
    return HostHealth(InstanceState.RUNNING, "running", (ProbeResult("tcp", Health.FAIL, detail),))


def provider(state: InstanceState, detail: str) -> HostHealth:
    return HostHealth(state, detail, (ProbeResult("tcp", Health.FAIL, "refused"),))


def unknown() -> HostHealth:
    return HostHealth(None, "", (ProbeResult("tcp", Health.UNKNOWN, "not run"),))


def obs(state: PairState = PairState.SYNCING, **kw: object) -> Observation:
    base = Observation(now=NOW, state=state, has_standby=True, primary=healthy(), standby=healthy(), network_ok=True,
                       sync=SyncStatus(last_good_at=NOW - 12, last_started_at=NOW - 12), operation=None)
    return replace(base, **kw)  # type: ignore[arg-type]


def kinds(decision: Decision) -> list[str]:
    return [type(a).__name__ for a in decision.actions]


CASES = [
    ("healthy and synced: nothing to do", obs(), Memory(), [], "GPU healthy; standby lag 12 s"),
    ("a settled change starts a pass before the interval", obs(changed_at=NOW - 0.25), Memory(), ["RunSync"],
     "GPU healthy; standby lag 12 s"),
    ("a change still within its debounce waits", obs(changed_at=NOW - 0.1), Memory(), [],
     "GPU healthy; standby lag 12 s"),
    ("a change while a pass runs waits for it (coalesced)",
     obs(changed_at=NOW - 5, sync=SyncStatus(last_good_at=NOW - 12, last_started_at=NOW - 1, running=True)),
     Memory(), [], "GPU healthy; standby lag 12 s"),
    ("sync due", obs(sync=SyncStatus(last_good_at=NOW - 31, last_started_at=NOW - 31)), Memory(), ["RunSync"],
     "GPU healthy; standby lag 31 s"),
    ("sync running is not restarted", obs(sync=SyncStatus(last_good_at=NOW - 40, last_started_at=NOW - 40,
                                                          running=True)), Memory(), [], "GPU healthy"),
    ("first failure degrades", obs(primary=failing()), Memory(), ["SetState"],
     "GPU check failed (1/3): tcp: connection refused"),
    ("second failure stays degraded", obs(PairState.DEGRADED, primary=failing()), Memory(primary_failures=1), [],
     "GPU check failed (2/3)"),
    ("third failure fails over", obs(PairState.DEGRADED, primary=failing()), Memory(primary_failures=2),
     ["FailOver"], "failing over to the standby: the GPU failed 3 consecutive health checks (tcp: connection refused)"),
    ("an unknown probe neither counts nor resets", obs(PairState.DEGRADED, primary=unknown()),
     Memory(primary_failures=2), [], "GPU check failed (2/3)"),
    ("a healthy check resets the count", obs(PairState.DEGRADED), Memory(primary_failures=2), ["SetState"],
     "GPU healthy"),
    ("outbid is authoritative", obs(primary=provider(InstanceState.OUTBID, "stopped, intended running")), Memory(),
     ["FailOver"], "failing over to the standby: the provider reports the GPU outbid (stopped, intended running)"),
    ("offline is authoritative", obs(primary=provider(InstanceState.OFFLINE, "offline")), Memory(), ["FailOver"],
     "the provider reports the GPU offline"),
    ("operator failover", obs(intents=(Intent(7, "failover", NOW),)), Memory(), ["ConsumeIntent", "FailOver"],
     "failing over to the standby: an operator asked for a failover"),
    ("no failover without a healthy standby", obs(primary=failing(), standby=failing()),
     Memory(primary_failures=2, standby_failures=2), ["Alert"],
     "cannot fail over: the GPU failed 3 consecutive health checks"),
    ("GPU and standby lost, the standby preempted: it is started again to fail over to it",
     obs(primary=provider(InstanceState.OFFLINE, "offline"), standby=provider(InstanceState.PREEMPTED, "preempted")),
     Memory(), ["ReplaceStandby", "SetState"],
     "the GPU is failing (the provider reports the GPU offline (offline)) and the standby is preempted: starting "
     "the standby again to fail over to it"),
    ("auto_failover off waits for an operator", obs(primary=failing()), Memory(primary_failures=2), None,
     "auto_failover is off, waiting for an operator"),
    ("standby preempted is replaced, GPU untouched", obs(standby=provider(InstanceState.PREEMPTED, "preempted")),
     Memory(), ["ReplaceStandby", "SetState"],
     "the standby was lost (the provider reports it preempted); replacing it"),
    ("standby unreachable three times is replaced", obs(standby=failing()), Memory(standby_failures=2),
     ["ReplaceStandby", "SetState"], "the standby was lost (tcp: connection refused)"),
    ("controller network down: no judgement", obs(primary=failing(), network_ok=False), Memory(primary_failures=2),
     ["Alert"], "the controller's own network is down, so no host is judged and nothing fails over"),
    ("sync failures alert once", obs(sync=SyncStatus(last_good_at=NOW - 5, last_started_at=NOW - 5,
                                                     consecutive_failures=4, last_error="disk full")), Memory(),
     ["Alert"], "GPU healthy"),
    ("health failures alert past 5 (auto_failover off)", obs(PairState.DEGRADED, primary=failing()),
     Memory(primary_failures=5), ["Alert", "Alert"], "GPU failed 6 consecutive health checks"),
    ("starting without standby creates one", obs(PairState.STARTING, has_standby=False, standby=None), Memory(),
     ["ReplaceStandby", "SetState"], "the pair has no standby yet; creating one"),
    ("starting with a standby syncs", obs(PairState.STARTING), Memory(), ["RunSync", "SetState"],
     "the pair is up; starting replication"),
    ("failed over starts recovery", obs(PairState.FAILED_OVER, standby=None, has_standby=False), Memory(),
     ["StartRecovery", "SetState"], "the CPU serves the endpoint; renting a new GPU"),
    ("a CPU preempted while it serves is started again before a GPU is rented",
     obs(PairState.FAILED_OVER, primary=provider(InstanceState.PREEMPTED, "preempted"), standby=None,
         has_standby=False), Memory(), ["Alert", "StartCpu"],
     "the CPU serving the endpoint is preempted; starting it again, its disk holds the workspace"),
    ("no recovery slot: the pair waits its turn", obs(PairState.FAILED_OVER, standby=None, recovery_turn=False,
                                                      recoveries_in_flight=4), Memory(), [],
     "waiting for a recovery slot: 4 recoveries in flight"),
    ("an operator's recovery does not wait for a slot", obs(PairState.FAILED_OVER, standby=None, recovery_turn=False,
                                                            intents=(Intent(3, "recover", NOW),)), Memory(),
     ["ConsumeIntent", "StartRecovery", "SetState"], "renting a new GPU (asked by an operator)"),
    ("recovery limit per day", obs(PairState.FAILED_OVER, standby=None, recoveries_today=3), Memory(), ["Alert"],
     "3 recoveries today reached the daily limit"),
    ("operator recovery beats the limit", obs(PairState.FAILED_OVER, standby=None, recoveries_today=3,
                                              intents=(Intent(3, "recover", NOW),)), Memory(),
     ["ConsumeIntent", "Alert", "StartRecovery", "SetState"], "renting a new GPU (asked by an operator)"),
    ("recovery in progress", obs(PairState.RECOVERING, operation=OperationStatus("recovery", "restoring", NOW - 42)),
     Memory(), [], "recovery in progress: restoring (42 s)"),
    ("recovery done", obs(PairState.RECOVERING, operation=OperationStatus("recovery", "switching_back", NOW - 90,
                                                                         finished=True, succeeded=True)),
     Memory(), ["SetState"], "recovered in 90 s: the new GPU serves the endpoint"),
    ("recovery failed stays on the CPU", obs(PairState.RECOVERING, operation=OperationStatus(
        "recovery", "renting", NOW - 9, finished=True, error="every offer failed")), Memory(), ["Alert", "SetState"],
     "recovery failed (every offer failed); the pair stays on the CPU"),
    ("recovery resumes after restart", obs(PairState.RECOVERING, operation=None), Memory(), ["StartRecovery"],
     "resuming the recovery after a controller restart"),
    ("standby replacement in progress", obs(PairState.STANDBY_LOST, operation=OperationStatus(
        "replace_standby", "syncing", NOW - 5)), Memory(), [], "creating a standby: syncing (5 s)"),
    ("standby replaced", obs(PairState.STANDBY_LOST, operation=OperationStatus(
        "replace_standby", "syncing", NOW - 5, finished=True, succeeded=True)), Memory(), ["SetState"],
     "the new standby is synced; the pair is protected again"),
    ("a standby replacement that failed is tried again", obs(PairState.STANDBY_LOST, operation=OperationStatus(
        "replace_standby", "syncing", NOW - 5, finished=True, error="ssh never answered"),
        standby_attempts_last_hour=1), Memory(), ["Alert", "ReplaceStandby"],
     "replacing the standby failed (ssh never answered); trying again"),
    ("the hour's standby attempts are spent: wait", obs(PairState.STANDBY_LOST, operation=OperationStatus(
        "replace_standby", "syncing", NOW - 5, finished=True, error="ssh never answered"),
        standby_attempts_last_hour=3), Memory(alerted=frozenset({"standby_replace_failed"})), ["Alert"],
     "but 3 attempts failed in the last hour, so waiting before the next"),
    ("a lost standby waits too when the attempts are spent", obs(standby=provider(InstanceState.PREEMPTED, "x"),
                                                                 standby_attempts_last_hour=3), Memory(),
     ["Alert", "SetState"], "waiting before the next"),
    ("a primary at a new address is followed, its failures not counted",
     obs(PairState.DEGRADED, primary=replace(failing(), moved_to=("127.9.9.9", 2200))), Memory(primary_failures=2),
     ["RefreshAddress"], "GPU check failed (2/3)"),
    ("a standby at a new address is followed", obs(standby=replace(failing(), moved_to=("127.9.9.8", 2201))),
     Memory(standby_failures=2), ["RefreshAddress"], "GPU healthy"),
    ("pause", obs(intents=(Intent(1, "pause", NOW),)), Memory(), ["ConsumeIntent", "SetState"],
     "paused by an operator (was syncing)"),
    ("paused ignores failures and intents",
     obs(PairState.PAUSED, primary=failing(), intents=(Intent(2, "sync", NOW),)),
     Memory(primary_failures=9), ["ConsumeIntent"], "paused by an operator: no syncs and no failover until resumed"),
    ("resume", obs(PairState.PAUSED, intents=(Intent(4, "resume", NOW),)), Memory(paused_from=PairState.DEGRADED),
     ["ConsumeIntent", "SetState"], "resumed by an operator, back to degraded"),
]


@pytest.mark.parametrize(("name", "observation", "memory", "actions", "reason"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, observation: Observation, memory: Memory, actions: list[str] | None, reason: str) -> None:
    policy = POLICY if "auto_failover off" not in name else replace(POLICY, auto_failover=False)
    decision = decide(observation, memory, policy)
    if actions is not None:
        assert kinds(decision) == actions
    assert reason in decision.reason


def test_every_state_has_a_decision() -> None:
    for state in PairState:
        decision = decide(obs(state, operation=OperationStatus("recovery", "searching", NOW)), Memory(), POLICY)
        assert decision.reason, state


def test_flapping_never_fails_over() -> None:
    """Alternating fail/ok for 60 checks never reaches three consecutive failures."""
    memory, state = Memory(), PairState.SYNCING
    for tick in range(60):
        observation = obs(state, primary=failing() if tick % 2 == 0 else healthy(), now=NOW + tick)
        decision = decide(observation, memory, POLICY)
        assert not decision.has(FailOver), tick
        memory = decision.memory
        for action in decision.actions:
            if isinstance(action, SetState):
                state = action.state


def test_an_alert_is_raised_once_until_it_clears() -> None:
    observation = obs(sync=SyncStatus(last_good_at=NOW, last_started_at=NOW, consecutive_failures=4, last_error="x"))
    first = decide(observation, Memory(), POLICY)
    second = decide(observation, first.memory, POLICY)
    assert first.has(Alert) and not second.has(Alert)
    cleared = decide(obs(), second.memory, POLICY)
    assert "sync_failures" not in cleared.memory.alerted


def test_intents_are_always_consumed() -> None:
    for state in (PairState.RECOVERING, PairState.FAILED_OVER, PairState.STANDBY_LOST):
        observation = obs(state, intents=(Intent(9, "failover", NOW),), standby=None,
                          operation=OperationStatus("recovery", "renting", NOW))
        decision = decide(observation, Memory(), POLICY)
        assert any(isinstance(a, ConsumeIntent) and a.intent_id == 9 for a in decision.actions), state


def test_with_the_gpu_failing_a_standby_is_only_started_again_never_created() -> None:
    """Nothing could fill a new standby from a failing GPU: every attempt only restarts the stopped one."""
    both = obs(primary=provider(InstanceState.OFFLINE, "offline"), standby=provider(InstanceState.STOPPED, "stopped"))
    assert decide(both, Memory(), POLICY).actions[0] == ReplaceStandby(only_restart=True)
    failed = obs(PairState.STANDBY_LOST, primary=provider(InstanceState.OFFLINE, "offline"),
                 standby=provider(InstanceState.STOPPED, "stopped"), operation=OperationStatus(
                     "replace_standby", "restarting", NOW - 5, finished=True, error="boot timed out"))
    assert ReplaceStandby(only_restart=True) in decide(failed, Memory(), POLICY).actions
    back = replace(failed, primary=healthy())
    assert ReplaceStandby(only_restart=False) in decide(back, Memory(), POLICY).actions
    done = replace(failed, operation=OperationStatus("replace_standby", "restarting", NOW - 5, finished=True,
                                                     succeeded=True))
    assert "failing over to it if the GPU is still failing" in decide(done, Memory(), POLICY).reason


def test_start_recovery_and_replace_standby_are_background_actions() -> None:
    assert isinstance(StartRecovery(), StartRecovery) and isinstance(ReplaceStandby(), ReplaceStandby)
    assert RunSync() == RunSync()


def test_recovery_slots_go_to_the_pairs_that_failed_over_first() -> None:
    waiting = [("c", 30.0), ("a", 10.0), ("d", 40.0), ("b", 20.0)]
    assert recovery_turns(waiting, in_flight=1, limit=3) == {"a", "b"}
    assert recovery_turns(waiting, in_flight=3, limit=3) == frozenset()
    assert recovery_turns(waiting, in_flight=5, limit=3) == frozenset()
    assert recovery_turns(waiting, in_flight=9, limit=0) == {"a", "b", "c", "d"}  # 0: no limit


def test_a_pass_falls_due_an_interval_after_the_last_began_or_a_debounce_after_the_first_change() -> None:
    interval, debounce = POLICY.sync_interval, POLICY.change_debounce
    assert next_pass_at(SyncStatus(), None, POLICY) == float("-inf"), "never synced: due now"
    last = SyncStatus(last_good_at=NOW - 1, last_started_at=NOW - 2)
    assert next_pass_at(last, None, POLICY) == NOW - 2 + interval
    assert next_pass_at(last, NOW - 0.5, POLICY) == min(NOW - 2 + interval, NOW - 0.5 + debounce)
    assert next_pass_at(replace(last, running=True), NOW - 0.5, POLICY) is None, "one pass in flight at most"
    for at in (NOW - 2 + interval - 0.01, NOW - 2 + interval):
        due = decide(obs(sync=last, now=at), Memory(), POLICY).has(RunSync)
        assert due == (at >= NOW - 2 + interval), "decide starts a pass exactly from the instant the loop ticks at"
