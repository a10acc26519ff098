"""The child life cycle as a pure state machine: injected clock, no processes."""

from __future__ import annotations

from appliance.tcpcopyd.lifecycle import HEARTBEAT_LIVENESS, Action, ChildState, Lifecycle


def started(now: float = 0.0, **kw: object) -> Lifecycle:
    life = Lifecycle(**kw)  # type: ignore[arg-type]
    life.spawned(now)
    return life


def test_starting_becomes_running_after_startsecs():
    life = started(startsecs=1.0)
    assert life.transition(0.5, alive=True) is Action.NONE and life.state is ChildState.STARTING
    assert life.transition(1.0, alive=True) is Action.NONE and life.state is ChildState.RUNNING


def test_death_while_running_backs_off_then_respawns_and_counts_a_restart():
    life = started(startsecs=1.0)
    life.transition(2.0, alive=True)
    life.beat(2.0)
    assert life.transition(2.5, alive=False) is Action.NONE
    assert life.state is ChildState.BACKOFF and life.exits == 1
    assert life.transition(2.55, alive=False) is Action.NONE           # still backing off
    assert life.transition(2.61, alive=False) is Action.SPAWN
    assert life.restarts == 1
    life.spawned(2.61)
    assert life.state is ChildState.STARTING


def test_failed_boots_in_a_row_halt_instead_of_looping():
    life = started(startsecs=1.0, startretries=3)
    now = 0.0
    actions = []
    for _ in range(10):
        now += 0.2
        action = life.transition(now, alive=False)
        actions.append(action)
        if action is Action.HALT:
            break
        while (action := life.transition(now, alive=False)) is not Action.SPAWN:
            now += 0.05
        life.spawned(now)
    assert actions[-1] is Action.HALT and life.state is ChildState.FATAL
    assert life.failed_boots == 3 and life.restarts == 2


def test_backoff_grows_with_consecutive_failed_boots():
    life = started(startretries=10)
    delays = []
    now = 0.0
    for _ in range(4):
        life.transition(now, alive=False)
        delays.append(round(life.retry_at - now, 3))
        now = life.retry_at
        assert life.transition(now, alive=False) is Action.SPAWN
        life.spawned(now)
    assert delays == [0.2, 0.4, 0.8, 1.6]


def test_a_boot_that_lasts_resets_the_failure_count():
    life = started(startsecs=1.0, startretries=2)
    life.transition(0.1, alive=False)
    now = life.retry_at
    life.transition(now, alive=False)
    life.spawned(now)
    life.transition(now + 1.0, alive=True)
    assert life.state is ChildState.RUNNING and life.failed_boots == 0


def test_missed_heartbeats_kill_a_hung_child():
    life = started(startsecs=1.0)
    life.transition(1.0, alive=True)
    life.beat(1.0)
    assert life.transition(1.0 + HEARTBEAT_LIVENESS - 0.1, alive=True) is Action.NONE
    assert life.transition(1.0 + HEARTBEAT_LIVENESS + 0.1, alive=True) is Action.KILL
    life.beat(5.0)
    assert life.transition(5.5, alive=True) is Action.NONE
