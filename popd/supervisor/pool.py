"""Pool slot records, idle/busy bookkeeping, spawn pacing, crash back-off.

Runs in: the supervisor.  A slot is a child plus its front.  It counts as
taken from the moment it is forked until BOTH processes are gone: a front
that outlives its child (it is re-parented to the supervisor, the
subreaper) still holds a place under max_children.

    STARTING -> IDLE -> BUSY -> EXITED (child gone, front may linger) -> gone
"""
import collections
import enum
import time
from dataclasses import dataclass, field

from popd import limits


class SlotState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    EXITED = "exited"


@dataclass(eq=False)
class Slot:
    id: int
    pid: int
    pidfd: int
    sock: object                    # supervisor end of the child channel
    state: SlotState = SlotState.STARTING
    front_pid: int | None = None
    front_pidfd: int | None = None
    admission_key: str | None = None
    busy_since: float | None = None
    granted: bool = False
    peer: str = ""
    session: str | None = None      # the connection's id in log lines
    # For `popd ctl who` and the counters (stats.py): the listener's TLS
    # mode, when it was accepted, and what the session reported.
    listener_tls: str = ""
    accepted: float | None = None
    tls: str | None = None          # set by SESSION_STARTED
    bytes_sent: int = 0
    retrieved: int = 0
    deleted: int = 0
    # After the grant (sessions.py): who the child serves, its progress
    # samples, whether it said it logged its own end (CHILD_DONE), and why
    # the supervisor killed it, if it did.
    login: str = ""                 # sanitized, for log lines
    granted_login: str = ""         # as granted, for the broker (LOGIN-DELAY)
    uid: int | None = None
    watch: object = None
    done: bool = False
    killed: str | None = None
    # Killed on purpose while idle (a reload replaces it): not a crash.
    retiring: bool = False
    started: float = field(default_factory=time.monotonic)
    broker: object = None               # the BrokerLink holding its channels

    @property
    def gone(self):
        return self.pidfd is None and self.front_pidfd is None


class Pool:
    def __init__(self):
        self.slots = {}
        self.idle = collections.deque()
        self.next_id = 1
        self.backoff = 0.0
        self.next_spawn = 0.0

    def new_id(self):
        sid, self.next_id = self.next_id, self.next_id + 1
        return sid

    def add(self, slot):
        self.slots[slot.id] = slot

    def count(self, *states):
        return sum(1 for s in self.slots.values() if s.state in states)

    def take_idle(self):
        while self.idle:
            slot = self.slots.get(self.idle.popleft())
            if slot is not None and slot.state is SlotState.IDLE:
                return slot
        return None

    def idle_forget(self, slot):
        """A slot being retired must not be handed a client meanwhile."""
        if slot.id in self.idle:
            self.idle.remove(slot.id)

    def mark_idle(self, slot):
        assert slot.state is SlotState.STARTING, slot.state
        slot.state = SlotState.IDLE
        self.idle.append(slot.id)

    def mark_busy(self, slot, key, peer, session):
        assert slot.state is SlotState.IDLE, slot.state
        slot.state = SlotState.BUSY
        slot.admission_key = key
        slot.peer = peer
        slot.session = session
        slot.busy_since = time.monotonic()

    def child_exited(self, slot):
        """The child is gone; a slot that never served anyone counts as a
        crash and slows further spawning (doubling up to a cap)."""
        if slot.state in (SlotState.STARTING, SlotState.IDLE) and not slot.retiring:
            self.back_off()
        elif slot.state is SlotState.BUSY:
            self.backoff = 0.0                   # slots serve clients: healthy
        slot.state = SlotState.EXITED

    def back_off(self):
        """Slow further spawning: doubling, up to a cap."""
        self.backoff = min(max(self.backoff * 2, limits.SPAWN_BACKOFF_MIN),
                           limits.SPAWN_BACKOFF_MAX)
        self.next_spawn = time.monotonic() + self.backoff

    def remove(self, slot):
        self.slots.pop(slot.id, None)

    def may_spawn(self, now):
        return now >= self.next_spawn
