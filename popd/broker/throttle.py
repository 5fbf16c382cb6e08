"""Password-guessing defences: failure counts per address and per user,
and the delay the broker puts before its answer.

Runs in: the auth broker.

Failures are counted per client address (IPv6 per /64, the same key
admission uses) and per login name.  The delay before an answer grows with
the larger count (`delay_min`, doubling, capped at `delay_max`) and applies
to a right password too, so a short answer does not tell a guesser it was
right -- up to `delay_max_success`: a right password is never held longer
than that, so a user whose name is being guessed can still log in inside
the login deadline (broker.py applies the cap; popd(8) says what it costs).
A (user, address key) pair that logged in within the window is not
delayed by the *user's* count at all; that address still counts its own
failures.

Memory.  Every key here is chosen by unauthenticated clients (names,
addresses), so the tables are bounded by bytes, not trusted to stay small:
a key is stored as a 64-bit keyed digest (blake2b with a key made at
start, so nobody can aim collisions at a name), and its value is one
small int.  Counts use two fixed buckets of one window each, the previous
bucket's count fading linearly over the current one (the usual sliding-
window estimate): a failure counts fully for at least one window and
fades out within two.  Each table holds at most `max_keys`; when full, the
least recently touched quarter is dropped.  ENTRY_BYTES is what one entry
costs in CPython 3.11 (digest int, value int, dict slot): about 120 bytes
at 100,000 keys (tracemalloc), rounded up for the steps in which a dict
grows; tests/unit/test_throttle.py checks a full table against it.
"""
import hashlib
import itertools
import math
import os
import time

# Counts stop growing here: the delay has long reached its cap.
MAX_COUNT = 255
# Bytes per table entry, measured (see the module docstring).
ENTRY_BYTES = 160


class _Table:
    """Approximate failure counts over a sliding window, keyed by digest."""

    def __init__(self, window, max_keys, secret):
        self.window = window
        self.max_keys = max_keys
        self.secret = secret
        self.entries = {}               # digest -> bucket << 16 | prev << 8 | cur

    def digest(self, key):
        return int.from_bytes(hashlib.blake2b(
            key.encode("utf-8", "surrogateescape"), digest_size=8,
            key=self.secret).digest(), "big")

    def count(self, key, now):
        h = self.digest(key)
        v = self.entries.get(h)
        if v is None:
            return 0
        bucket, frac = divmod(now, self.window)
        bucket, frac = int(bucket), frac / self.window
        stored, prev, cur = v >> 16, (v >> 8) & 0xFF, v & 0xFF
        if stored == bucket:
            estimate = cur + prev * (1 - frac)
        elif stored == bucket - 1:
            estimate = cur * (1 - frac)
        else:
            del self.entries[h]
            return 0
        return math.ceil(estimate)

    def add(self, key, now):
        h = self.digest(key)
        bucket = int(now // self.window)
        v = self.entries.pop(h, None)
        prev = cur = 0
        if v is not None:
            stored, p, c = v >> 16, (v >> 8) & 0xFF, v & 0xFF
            if stored == bucket:
                prev, cur = p, c
            elif stored == bucket - 1:
                prev = c
        cur = min(cur + 1, MAX_COUNT)
        self.entries[h] = bucket << 16 | prev << 8 | cur     # most recent last
        _bound(self.entries, self.max_keys)


def _bound(entries, max_keys):
    """Drop the least recently touched quarter once `max_keys` is passed."""
    if len(entries) > max_keys:
        for h in list(itertools.islice(entries, max(1, max_keys // 4))):
            del entries[h]


class Throttle:
    def __init__(self, window, delay_min, delay_max, memory_bytes):
        self.window = window
        self.delay_min = delay_min
        self.delay_max = delay_max
        # Three tables share the budget: addresses, users, recent successes.
        self.max_keys = max(16, memory_bytes // (3 * ENTRY_BYTES))
        secret = os.urandom(16)
        self.by_address = _Table(window, self.max_keys, secret)
        self.by_user = _Table(window, self.max_keys, secret)
        self.good = {}                  # digest of (user, address) -> seconds

    def _pair(self, user, address):
        return self.by_user.digest(f"{user}\0{address}")

    def _recently_good(self, user, address, now):
        t = self.good.get(self._pair(user, address))
        return t is not None and now - t < self.window

    def delay(self, user, address, now=None):
        """Seconds to wait before answering this attempt."""
        now = time.monotonic() if now is None else now
        failures = self.by_address.count(address, now)
        if not self._recently_good(user, address, now):
            failures = max(failures, self.by_user.count(user, now))
        if failures == 0 or self.delay_min == 0:
            return 0.0
        return min(self.delay_min * 2.0 ** min(failures - 1, 32), self.delay_max)

    def suspect(self, address, now):
        """Has this address failed recently?  (The fair queue serves such
        addresses after clean ones.)"""
        return self.by_address.count(address, now) > 0

    def failed(self, user, address, now=None):
        now = time.monotonic() if now is None else now
        self.by_address.add(address, now)
        self.by_user.add(user, now)

    def succeeded(self, user, address, now=None):
        now = time.monotonic() if now is None else now
        h = self._pair(user, address)
        self.good.pop(h, None)
        self.good[h] = int(now)
        _bound(self.good, self.max_keys)

    def keys(self):
        """Entries held, per table (for tests and the log)."""
        return len(self.by_address.entries), len(self.by_user.entries), len(self.good)
