"""Life cycle of one supervised child: an explicit state and a pure transition function.

Used by the supervisor (runs in tcpcopyd's main process); no processes, no clock of its own:
`transition` is given what was observed (is the process alive, when did it last beat) and the
time, and answers what the supervisor must do. Tested without forking anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3          # missed heartbeats before a running child is declared hung
BACKOFF_BASE = 0.1
BACKOFF_MAX = 2.0


class ChildState(enum.Enum):
    STARTING = "starting"      # spawned, not yet up for startsecs
    RUNNING = "running"
    BACKOFF = "backoff"        # exited; waiting to be started again
    STOPPED = "stopped"
    FATAL = "fatal"            # failed to boot startretries times in a row


class Action(enum.Enum):
    NONE = "none"
    SPAWN = "spawn"            # start the process (again)
    KILL = "kill"              # hung: SIGKILL it; its exit is handled next time
    HALT = "halt"              # give up: the appliance must stop


@dataclass
class Lifecycle:
    startsecs: float = 1.0
    startretries: int = 3
    state: ChildState = ChildState.STOPPED
    started_at: float = 0.0
    last_beat: float = 0.0
    failed_boots: int = 0
    restarts: int = 0
    retry_at: float = 0.0
    exits: int = 0

    def spawned(self, now: float) -> None:
        self.state = ChildState.STARTING          # STOPPED/BACKOFF -> STARTING
        self.started_at = now
        self.last_beat = now

    def beat(self, now: float) -> None:
        self.last_beat = now

    def transition(self, now: float, alive: bool) -> Action:
        """One step of the machine, given whether the process is alive at `now`."""
        if self.state is ChildState.STARTING:
            if not alive:
                self.exits += 1
                self.failed_boots += 1
                if self.failed_boots >= self.startretries:
                    self.state = ChildState.FATAL  # STARTING -> FATAL: it cannot boot
                    return Action.HALT
                self._backoff(now)                 # STARTING -> BACKOFF
                return Action.NONE
            if now >= self.started_at + self.startsecs:
                self.state = ChildState.RUNNING    # STARTING -> RUNNING
                self.failed_boots = 0
            return Action.NONE
        if self.state is ChildState.RUNNING:
            if not alive:
                self.exits += 1
                self._backoff(now)                 # RUNNING -> BACKOFF: it died
                return Action.NONE
            if now > self.last_beat + HEARTBEAT_LIVENESS * HEARTBEAT_INTERVAL:
                return Action.KILL                 # hung; its exit moves it to BACKOFF
            return Action.NONE
        if self.state is ChildState.BACKOFF and now >= self.retry_at:
            self.restarts += 1
            return Action.SPAWN                    # BACKOFF -> STARTING (via spawned())
        return Action.NONE

    def _backoff(self, now: float) -> None:
        self.state = ChildState.BACKOFF
        self.retry_at = now + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** self.failed_boots)
