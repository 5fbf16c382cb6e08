"""The supervisor's session bookkeeping: one holder per maildrop, a
bounded wait, and the progress watch read from a real process's /proc."""
import os
import signal
import subprocess
import time

from popd import limits
from popd.supervisor import sessions


def test_one_holder_per_maildrop_one_waiter_and_a_bounded_wait():
    m = sessions.Maildrops()
    alive = {1, 2, 3}.__contains__
    assert m.claim(1, "/var/mail/alice", 1001, None, alive) == "ok"
    assert m.claim(2, "/var/mail/alice", 1001, None, alive) == "wait"
    assert m.claim(3, "/var/mail/alice", 1001, None, alive) == "refuse"
    assert m.claim(3, "/var/mail/bob", 1002, None, alive) == "ok"
    assert m.release(1) == 2                    # the waiter now holds it
    assert m.claim(4, "/var/mail/alice", 1001, None, alive) == "wait"
    assert m.expired_waits(time.monotonic()) == []
    assert m.expired_waits(time.monotonic() + limits.SESSION_HANDOFF_WAIT + 1) == [4]
    # A holder whose child is gone does not block (its exit was missed).
    assert m.claim(5, "/var/mail/alice", 1001, None, lambda sid: sid != 2) == "ok"


def test_per_uid_cap():
    m = sessions.Maildrops()
    alive = lambda sid: True
    assert m.claim(1, "/srv/v/a", 5000, 2, alive) == "ok"
    assert m.claim(2, "/srv/v/b", 5000, 2, alive) == "ok"
    assert m.claim(3, "/srv/v/c", 5000, 2, alive) == "refuse"
    m.release(1)
    assert m.claim(3, "/srv/v/c", 5000, 2, alive) == "ok"


def test_a_stopped_process_is_named_after_the_grace_and_an_idle_one_after_its_timeout():
    p = subprocess.Popen(["sleep", "60"])
    try:
        now = time.monotonic()
        w = sessions.Watch(now)
        assert sessions.stall_reason(p.pid, w, now, 600) is None
        os.kill(p.pid, signal.SIGSTOP)
        settle(p.pid, "T")
        t = now + limits.SESSION_WATCH_INTERVAL
        assert sessions.stall_reason(p.pid, w, t, 600) is None      # first seen
        t += limits.SESSION_STOPPED_GRACE
        assert sessions.stall_reason(p.pid, w, t, 600).startswith("stopped for")
        os.kill(p.pid, signal.SIGCONT)
        settle(p.pid, "S")
        w = sessions.Watch(now)
        assert sessions.stall_reason(p.pid, w, now, 10) is None
        late = now + 10 + limits.SESSION_STALL_GRACE
        assert sessions.stall_reason(p.pid, w, late, 10).startswith("no progress")
    finally:
        p.kill()
        p.wait()
    assert sessions.stall_reason(p.pid, sessions.Watch(0), 0, 10) is None   # gone


def settle(pid, state):
    """Wait until the process is in `state` and has stopped switching (on a
    loaded machine a signal's effect, and the switch it causes, can take
    longer than any fixed sleep)."""
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        seen = sessions.sample(pid)
        if seen is not None and seen[0] == state and seen == last:
            return
        last = seen
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} did not settle in state {state}: {last}")
