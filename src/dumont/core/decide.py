"""The pure decision core: one observation of a pair in, actions and one reason sentence out.

No I/O, no clock, no sleeps. The reason sentence is the one thing every part of the system shows: the log line,
the event row, the notification, the dashboard, and the assertion in the tests of this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from dumont.core.model import (
    Action,
    Alert,
    ConsumeIntent,
    Decision,
    FailOver,
    HostHealth,
    Memory,
    Observation,
    PairState,
    Policy,
    RefreshAddress,
    ReplaceStandby,
    RunSync,
    SetState,
    StartCpu,
    StartRecovery,
    SyncStatus,
)


@dataclass
class _Plan:
    """The decision under construction: actions so far and the most important sentence."""

    observation: Observation
    memory: Memory
    actions: list[Action]
    reason: str = ""

    def do(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def become(self, state: PairState) -> None:
        if state != self.observation.state:
            self.actions.append(SetState(state))

    def alert(self, kind: str, message: str) -> None:
        if kind not in self.memory.alerted:
            self.actions.append(Alert(kind, message))
            self.memory = replace(self.memory, alerted=self.memory.alerted | {kind})

    def clear(self, kind: str) -> None:
        if kind in self.memory.alerted:
            self.memory = replace(self.memory, alerted=self.memory.alerted - {kind})

    def say(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason

    def decision(self) -> Decision:
        return Decision(tuple(self.actions), self.reason or "no action", self.memory)


def decide(observation: Observation, memory: Memory, policy: Policy) -> Decision:
    """Decide what to do for one pair now."""
    plan = _Plan(observation, memory, [])
    if _handle_pause(plan):
        return plan.decision()
    if observation.network_ok is False:
        plan.alert("controller_network", "the controller cannot reach the network; suspending judgement")
        plan.say("the controller's own network is down, so no host is judged and nothing fails over")
        return plan.decision()
    plan.clear("controller_network")
    _follow_moves(plan)
    handlers = {
        PairState.STARTING: _starting,
        PairState.SYNCING: _protecting,
        PairState.DEGRADED: _protecting,
        PairState.FAILED_OVER: _failed_over,
        PairState.RECOVERING: _recovering,
        PairState.STANDBY_LOST: _replacing_standby,
    }
    handlers[observation.state](plan, policy)
    return plan.decision()


def _follow_moves(plan: _Plan) -> None:
    """A host its provider reports at a new address (it restarted) is reached there from now on."""
    obs = plan.observation
    for role, health in (("primary", obs.primary), ("standby", obs.standby)):
        if health is not None and health.moved_to is not None:
            plan.do(RefreshAddress(role, *health.moved_to))


def _handle_pause(plan: _Plan) -> bool:
    """Pause and resume intents, and the paused state itself; True when nothing else should be decided."""
    obs = plan.observation
    for intent in obs.intents:
        if intent.kind == "pause" and obs.state != PairState.PAUSED:
            plan.memory = replace(plan.memory, paused_from=obs.state)
            plan.do(ConsumeIntent(intent.id, "paused"), SetState(PairState.PAUSED))
            plan.say(f"paused by an operator (was {obs.state}): no syncs and no failover until resumed")
            return True
        if intent.kind == "resume" and obs.state == PairState.PAUSED:
            back = plan.memory.paused_from or PairState.SYNCING
            plan.memory = replace(plan.memory, paused_from=None, primary_failures=0, standby_failures=0)
            plan.do(ConsumeIntent(intent.id, "resumed"), SetState(back))
            plan.say(f"resumed by an operator, back to {back}")
            return True
    if obs.state != PairState.PAUSED:
        return False
    for intent in obs.intents:
        plan.do(ConsumeIntent(intent.id, "ignored: the pair is paused"))
    plan.say("paused by an operator: no syncs and no failover until resumed")
    return True


def _replace_standby(plan: _Plan, policy: Policy, sentence: str, *, only_restart: bool = False) -> None:
    """Start a standby replacement, unless the hour's attempts are spent (each failed one was deleted)."""
    attempts = plan.observation.standby_attempts_last_hour
    if attempts >= policy.max_standby_attempts_per_hour:
        plan.alert("standby_attempts", f"{attempts} attempts to create a standby failed in the last hour; "
                                       "waiting before trying again")
        plan.say(f"{sentence}; but {attempts} attempts failed in the last hour, so waiting before the next")
        return
    plan.do(ReplaceStandby(only_restart=only_restart))
    plan.say(sentence)


def _starting(plan: _Plan, policy: Policy) -> None:
    if not plan.observation.has_standby:
        _replace_standby(plan, policy, "the pair has no standby yet; creating one")
        plan.become(PairState.STANDBY_LOST)
        return
    plan.do(RunSync())
    plan.become(PairState.SYNCING)
    plan.say("the pair is up; starting replication")


def _protecting(plan: _Plan, policy: Policy) -> None:
    """GPU primary, CPU standby: judge both, fail over or replace the standby if needed, keep syncing."""
    obs = plan.observation
    if obs.outcome is not None and obs.outcome.kind == "failover" and obs.outcome.succeeded:
        plan.memory = replace(plan.memory, primary_failures=0, standby_failures=0)
        plan.become(PairState.FAILED_OVER)
        plan.say(f"failed over to the standby: {obs.outcome.detail}")
        return
    operator_failover = _take_intent(plan, "failover")
    primary_failures = _count(plan.memory.primary_failures, obs.primary if obs.probed else None)
    standby_failures = _count(plan.memory.standby_failures, obs.standby if obs.probed else None)
    plan.memory = replace(plan.memory, primary_failures=primary_failures, standby_failures=standby_failures)
    standby_lost = (not obs.has_standby or (obs.standby is not None and obs.standby.provider_says_lost)
                    or standby_failures >= policy.standby_threshold)
    cause = _failover_cause(obs.primary, primary_failures, policy, operator_failover)
    if cause and standby_lost:
        if _restartable(obs.standby):
            # Its disk holds the snapshots: start it again and fail over to it (a chaos finding: the GPU killed
            # while the standby was preempted left the pair waiting for ever).
            assert obs.standby is not None
            _replace_standby(plan, policy, f"the GPU is failing ({cause}) and the standby is "
                                           f"{obs.standby.provider_state}: starting the standby again to fail over "
                                           "to it", only_restart=True)
            plan.become(PairState.STANDBY_LOST)
            return
        plan.alert("both_lost", f"the GPU is failing ({cause}) and there is no healthy standby to take over")
        plan.say(f"cannot fail over: {cause}, but the standby is lost too")
        return
    if cause and (policy.auto_failover or operator_failover):
        plan.do(FailOver(cause))
        plan.say(f"failing over to the standby: {cause}")
        return
    if standby_lost:
        _replace_standby(plan, policy, f"the standby was lost ({_standby_detail(obs)}); replacing it, the GPU is "
                                       "untouched")
        plan.become(PairState.STANDBY_LOST)
        return
    _health_alerts(plan, policy, primary_failures)
    _sync(plan, policy)
    if cause:
        plan.alert("gpu_down", f"{cause}; auto_failover is off, an operator must fail over")
        plan.become(PairState.DEGRADED)
        plan.say(f"{cause}; auto_failover is off, waiting for an operator")
    elif primary_failures:
        plan.become(PairState.DEGRADED)
        plan.say(f"GPU check failed ({primary_failures}/{policy.failover_threshold}): "
                 f"{obs.primary.summary() if obs.primary else 'no result'}")
    else:
        plan.become(PairState.SYNCING)
        plan.say(_healthy_sentence(obs))


def _count(previous: int, health: HostHealth | None) -> int:
    """Consecutive failed checks: a failure adds one, a healthy check resets, an unknown one changes nothing."""
    if health is None or health.moved_to is not None:  # probes of the old address say nothing about the host
        return previous
    if health.failed:
        return previous + 1
    return 0 if health.ok else previous


def _failover_cause(primary: HostHealth | None, failures: int, policy: Policy, operator: bool) -> str:
    if operator:
        return "an operator asked for a failover"
    if primary is None:
        return ""
    if primary.provider_says_lost:
        return f"the provider reports the GPU {primary.provider_state} ({primary.provider_detail})"
    if failures >= policy.failover_threshold:
        return f"the GPU failed {failures} consecutive health checks ({primary.summary()})"
    return ""


def _restartable(host: HostHealth | None) -> bool:
    """The provider stopped or preempted the host (a CPU VM) with its disk kept: it can be started again."""
    return host is not None and host.provider_state is not None and host.provider_state.restartable


def _gpu_failing(obs: Observation) -> bool:
    return obs.primary is not None and (obs.primary.provider_says_lost or obs.primary.failed)


def _standby_detail(obs: Observation) -> str:
    if not obs.has_standby:
        return "there is none"
    if obs.standby is not None and obs.standby.provider_says_lost:
        return f"the provider reports it {obs.standby.provider_state}"
    return obs.standby.summary() if obs.standby else "no result"


def _health_alerts(plan: _Plan, policy: Policy, primary_failures: int) -> None:
    if primary_failures > policy.health_failure_alert:
        plan.alert("health_checks", f"the GPU failed {primary_failures} consecutive health checks")
    elif primary_failures == 0:
        plan.clear("health_checks")
        plan.clear("gpu_down")
    if plan.memory.standby_failures > policy.health_failure_alert:
        plan.alert("standby_health", f"the standby failed {plan.memory.standby_failures} consecutive checks")
    elif plan.memory.standby_failures == 0:
        plan.clear("standby_health")


def _sync(plan: _Plan, policy: Policy) -> None:
    obs = plan.observation
    asked = _take_intent(plan, "sync")
    sync = obs.sync
    if sync.consecutive_failures > policy.sync_failure_alert:
        plan.alert("sync_failures", f"{sync.consecutive_failures} consecutive sync passes failed: {sync.last_error}")
    elif sync.consecutive_failures == 0:
        plan.clear("sync_failures")
    due_at = next_pass_at(sync, obs.changed_at, policy)
    if due_at is not None and (asked or obs.now >= due_at):
        plan.do(RunSync())


def next_pass_at(sync: SyncStatus, changed_at: float | None, policy: Policy) -> float | None:
    """When a pass falls due by time alone, or None while one runs (the next coalesces what comes meanwhile).

    A pass is due an interval after the last one began, or once a change has settled for the debounce, counted from
    the *first* change since the last pass began: a continuous writer never starves replication. The loop ticks at
    this instant rather than at its next health check, so waiting for a tick adds nothing to the RPO.
    """
    if sync.running:
        return None
    if sync.last_started_at is None:
        return float("-inf")
    due_at = sync.last_started_at + policy.sync_interval
    if changed_at is not None:
        due_at = min(due_at, changed_at + policy.change_debounce)
    return due_at


def _healthy_sentence(obs: Observation) -> str:
    if obs.sync.last_good_at is None:
        return "GPU healthy; no complete pass yet"
    return f"GPU healthy; standby lag {obs.now - obs.sync.last_good_at:.0f} s"


def _take_intent(plan: _Plan, kind: str) -> bool:
    """Consume every pending intent of ``kind``; True if there was one."""
    found = [i for i in plan.observation.intents if i.kind == kind]
    for intent in found:
        plan.do(ConsumeIntent(intent.id, "accepted"))
    return bool(found)


def _failed_over(plan: _Plan, policy: Policy) -> None:
    """The CPU serves the endpoint; start a recovery if allowed."""
    obs = plan.observation
    _take_ignored(plan, ("failover", "sync"), "ignored: the pair is failed over")
    if obs.primary is not None and obs.primary.provider_says_lost:
        plan.alert("cpu_lost", f"the CPU serving the pair is lost too ({obs.primary.provider_detail})")
        if _restartable(obs.primary):
            # Its disk holds the only workspace: a recovery now could restore nothing (and would rent for it). An
            # operator's `dumont recover` stays pending until the CPU is back.
            plan.do(StartCpu())
            plan.say(f"the CPU serving the endpoint is {obs.primary.provider_state}; starting it again, its disk "
                     "holds the workspace")
            return
    asked = _take_intent(plan, "recover")
    if not (asked or policy.auto_recovery):
        plan.say("the CPU serves the endpoint; auto_recovery is off, waiting for `dumont recover`")
        return
    if not asked and obs.recoveries_today >= policy.max_recoveries_per_day:
        plan.alert("recoveries_per_day", f"{obs.recoveries_today} recoveries today; not starting another on my own")
        plan.say(f"the CPU serves the endpoint; {obs.recoveries_today} recoveries today reached the daily limit")
        return
    if not asked and not obs.recovery_turn:
        plan.say(f"the CPU serves the endpoint; waiting for a recovery slot: {obs.recoveries_in_flight} "
                 "recoveries in flight (controller.max_recoveries_in_flight), pairs that failed over first go first")
        return
    if obs.recoveries_today >= 1:
        plan.alert("recovery_repeat", f"more than one auto-recovery today ({obs.recoveries_today + 1})")
    plan.do(StartRecovery())
    plan.become(PairState.RECOVERING)
    plan.say("the CPU serves the endpoint; renting a new GPU" + (" (asked by an operator)" if asked else ""))


def _take_ignored(plan: _Plan, kinds: tuple[str, ...], outcome: str) -> None:
    for intent in plan.observation.intents:
        if intent.kind in kinds:
            plan.do(ConsumeIntent(intent.id, outcome))


def _recovering(plan: _Plan, policy: Policy) -> None:
    obs = plan.observation
    _take_ignored(plan, ("failover", "sync", "recover"), "ignored: a recovery is running")
    op = obs.operation
    if op is None or op.kind != "recovery":
        plan.do(StartRecovery())
        plan.say("resuming the recovery after a controller restart")
    elif not op.finished:
        plan.say(f"recovery in progress: {op.step} ({obs.now - op.started_at:.0f} s)")
    elif op.succeeded:
        plan.clear("recovery_failed")
        plan.become(PairState.SYNCING)
        plan.say(f"recovered in {obs.now - op.started_at:.0f} s: the new GPU serves the endpoint")
    else:
        plan.alert("recovery_failed", f"recovery failed: {op.error}")
        plan.become(PairState.FAILED_OVER)
        plan.say(f"recovery failed ({op.error}); the pair stays on the CPU")


def _replacing_standby(plan: _Plan, policy: Policy) -> None:
    obs = plan.observation
    _take_ignored(plan, ("failover", "recover"), "ignored: the standby is being replaced")
    failing = _gpu_failing(obs)
    if failing:
        assert obs.primary is not None
        plan.alert("gpu_down_without_standby", f"the GPU is failing while the standby is being replaced "
                                               f"({obs.primary.summary()})")
    op = obs.operation
    if op is None or op.kind != "replace_standby":
        _replace_standby(plan, policy, "creating a standby", only_restart=failing)
    elif not op.finished:
        plan.say(f"creating a standby: {op.step} ({obs.now - op.started_at:.0f} s)")
    elif op.succeeded:
        plan.clear("standby_replace_failed")
        plan.clear("standby_attempts")
        plan.memory = replace(plan.memory, standby_failures=0)
        plan.become(PairState.SYNCING)
        plan.say("the standby is back; failing over to it if the GPU is still failing" if failing else
                 "the new standby is synced; the pair is protected again")
    else:
        plan.alert("standby_replace_failed", f"replacing the standby failed: {op.error}")
        _replace_standby(plan, policy, f"replacing the standby failed ({op.error}); trying again",
                         only_restart=failing)


def recovery_turns(waiting: Sequence[tuple[str, float]], in_flight: int, limit: int) -> frozenset[str]:
    """The failed-over pairs (name, when it failed over) that may start a recovery now: the longest waiting first,
    while fewer than ``limit`` run across the fleet (0: no limit)."""
    free = len(waiting) if limit == 0 else max(0, limit - in_flight)
    return frozenset(name for name, _ in sorted(waiting, key=lambda w: (w[1], w[0]))[:free])
