"""The broker's failure counters: delays, fading, and a memory bound that
holds whatever keys unauthenticated clients choose."""
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from popd.broker import throttle


def test_delays_double_from_min_to_max_and_fade_within_two_windows():
    t = throttle.Throttle(900, 2, 20, 1 << 20)
    now = 9000.0                        # the start of a window
    assert t.delay("alice", "192.0.2.1", now) == 0
    for n, want in enumerate([2, 4, 8, 16, 20, 20], start=1):
        t.failed("alice", f"192.0.2.{n}", now)
        assert t.delay("alice", "198.51.100.1", now) == want
    assert t.suspect("192.0.2.1", now) and not t.suspect("192.0.2.99", now)
    # Counted fully through the rest of the window, fading over the next
    # and gone after it.
    assert t.delay("alice", "198.51.100.1", now + 899) == 20
    assert 0 < t.delay("alice", "198.51.100.1", now + 900 + 450) <= 20
    assert t.delay("alice", "198.51.100.1", now + 1800) == 0


def test_a_recent_success_exempts_its_pair_from_the_user_count():
    t = throttle.Throttle(900, 2, 20, 1 << 20)
    t.succeeded("alice", "192.0.2.1", 100.0)
    for i in range(4):
        t.failed("alice", f"203.0.113.{i}", 101.0)
    assert t.delay("alice", "192.0.2.1", 102.0) == 0
    assert t.delay("alice", "192.0.2.2", 102.0) == 16


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 3000)), max_size=60))
def test_counts_never_exceed_the_failures_made(events):
    t = throttle.Throttle(900, 1, 600, 1 << 20)
    events.sort(key=lambda e: e[1])
    made = {}
    for key, when in events:
        t.failed(f"u{key}", "a", when)
        made[key] = made.get(key, 0) + 1
        for k, n in made.items():
            assert 0 <= t.by_user.count(f"u{k}", when) <= n


def test_a_full_table_stays_within_its_memory_budget():
    budget = 1 << 20
    t = throttle.Throttle(900, 2, 20, budget)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(4 * t.max_keys):
            t.failed(f"user-{i}", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 10.0)
            t.succeeded(f"user-{i}", "192.0.2.1", 10.0)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert all(n <= t.max_keys for n in t.keys())
    assert used <= budget, used
