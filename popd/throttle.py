"""Password-guessing defences: failure counts per address and per user,
and the delay the broker puts before its answer.

Runs in: the auth broker.

Failures are counted over a sliding window per client address (IPv6 per
/64, the same key admission uses) and per login name.  The delay before an
answer grows with the larger count (`delay_min`, doubling, capped at
`delay_max`) and applies to a right password too, so the delay itself says
nothing about the password.  The one exception: a (user, address key) pair
that logged in successfully within the window is not delayed by the
*user's* count, so a guesser hammering a named account cannot lock its
owner out; that owner's own address still counts its own failures.

Memory is bounded: at most `max_keys` tracked keys per table, the oldest
evicted first; each key keeps at most 64 timestamps.
"""
import collections
import time

MAX_STAMPS = 64


class _Table:
    def __init__(self, window, max_keys):
        self.window = window
        self.max_keys = max_keys
        self.stamps = collections.OrderedDict()

    def count(self, key, now):
        q = self.stamps.get(key)
        if q is None:
            return 0
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self.stamps[key]
            return 0
        return len(q)

    def add(self, key, now):
        q = self.stamps.pop(key, None) or collections.deque(maxlen=MAX_STAMPS)
        q.append(now)
        self.stamps[key] = q                   # most recent last
        while len(self.stamps) > self.max_keys:
            self.stamps.popitem(last=False)


class Throttle:
    def __init__(self, window, delay_min, delay_max, max_keys=100_000):
        self.window = window
        self.delay_min = delay_min
        self.delay_max = delay_max
        self.by_address = _Table(window, max_keys)
        self.by_user = _Table(window, max_keys)
        self.good = collections.OrderedDict()  # (user, address key) -> time
        self.max_keys = max_keys

    def _recently_good(self, user, address, now):
        t = self.good.get((user, address))
        return t is not None and now - t < self.window

    def delay(self, user, address, now=None):
        """Seconds to wait before answering this attempt."""
        now = time.monotonic() if now is None else now
        failures = self.by_address.count(address, now)
        if not self._recently_good(user, address, now):
            failures = max(failures, self.by_user.count(user, now))
        if failures == 0 or self.delay_min == 0:
            return 0.0
        return min(self.delay_min * 2 ** (failures - 1), self.delay_max)

    def failed(self, user, address, now=None):
        now = time.monotonic() if now is None else now
        self.by_address.add(address, now)
        self.by_user.add(user, now)

    def succeeded(self, user, address, now=None):
        now = time.monotonic() if now is None else now
        self.good.pop((user, address), None)
        self.good[(user, address)] = now
        while len(self.good) > self.max_keys:
            self.good.popitem(last=False)
