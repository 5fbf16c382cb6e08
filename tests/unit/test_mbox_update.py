"""Tests for popd.mail.mbox_update: compaction after DELE, crash safety, recovery.

Expected mailboxes are built from the raw message spans the test wrote
(``b"".join`` of the kept ones plus the appended ones), never from
popd.mail.mbox_update itself.  Crashes are real: a forked process runs the update
with an IO object that SIGKILLs it at step k, and the parent recovers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popd.mail import maildrop, mbox, mbox_update, state_files
from popd.mail.mbox_update import UpdateError, apply_deletions, recover, verify_unchanged

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
REAL = mbox_update.REAL_IO


# ------------------------------------------------------------------- helpers

def message(i: int, body_lines: int = 2, tag: str = "m") -> bytes:
    """One raw mbox span: From line, headers, body, separator line."""
    body = b"".join(b"%s %d line %d: some text to give it weight\n"
                    % (tag.encode(), i, j) for j in range(body_lines))
    return (b"From sender@example.org Mon Jan  1 00:00:%02d 2024\n" % (i % 60)
            + b"Subject: %s%d\n\n" % (tag.encode(), i) + body + b"\n")


class Box:
    """An mbox built from spans, its index, and a journal path elsewhere."""

    def __init__(self, tmp, spans, appended=(), state=None):
        self.spans = list(spans)
        self.appended = list(appended)
        self.path = os.path.join(str(tmp), "mbox")
        state = state or os.path.join(str(tmp), "state")
        os.makedirs(state, exist_ok=True)
        self.state = state
        self.journal = os.path.join(state, "0123abcd.journal")
        with open(self.path, "wb") as f:
            f.write(b"".join(self.spans))
        self.fd = os.open(self.path, os.O_RDWR)
        self.index = mbox.scan(self.fd)
        assert len(self.index) == len(self.spans)
        if self.appended:                     # delivered during the session
            self.append(b"".join(self.appended))
        self.before = b"".join(self.spans + self.appended)

    def append(self, data):
        with open(self.path, "ab") as f:
            f.write(data)

    def after(self, deleted):
        return b"".join([s for i, s in enumerate(self.spans) if i not in deleted]
                        + self.appended)

    def content(self):
        with open(self.path, "rb") as f:
            return f.read()

    def reopen(self):
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        return self.fd

    def leftovers(self):
        return sorted(os.listdir(self.state))

    def close(self):
        os.close(self.fd)


class StepIO(mbox_update.RealIO):
    """Counts every mutating operation; at step ``kill_at`` SIGKILLs itself
    before it, after it, or after writing half of it (``torn``)."""

    def __init__(self, kill_at=None, mode="after", mbox_fd=None):
        self.kill_at = kill_at
        self.mode = mode
        self.mbox_fd = mbox_fd
        self.steps = []                       # (name, detail) per step
        self.max_write = 0

    def _step(self, name, detail, do, torn=None):
        self.steps.append((name, detail))
        if len(self.steps) == self.kill_at:
            if self.mode == "torn" and torn is not None:
                torn()
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = do()
            os.kill(os.getpid(), signal.SIGKILL)
            return result
        return do()

    def open(self, path, flags, mode=0o600):
        if not flags & os.O_CREAT:
            return REAL.open(path, flags, mode)
        return self._step("open", path, lambda: REAL.open(path, flags, mode))

    def pwrite(self, fd, data, offset):
        data = bytes(data)
        self.max_write = max(self.max_write, len(data))
        where = "mbox" if fd == self.mbox_fd else "journal"
        half = data[:len(data) // 2]
        return self._step(f"pwrite-{where}", offset,
                          lambda: REAL.pwrite(fd, data, offset),
                          torn=lambda: REAL.pwrite(fd, half, offset))

    def fsync(self, fd):
        return self._step("fsync", fd, lambda: REAL.fsync(fd))

    def ftruncate(self, fd, length):
        return self._step("ftruncate", length, lambda: REAL.ftruncate(fd, length))

    def unlink(self, path):
        return self._step("unlink", path, lambda: REAL.unlink(path))

    def rename(self, src, dst):
        return self._step("rename", dst, lambda: REAL.rename(src, dst))

    def fsync_dir(self, path):
        return self._step("fsync_dir", path, lambda: REAL.fsync_dir(path))


def in_child(fn):
    """Run ``fn`` in a forked process; return its wait status."""
    pid = os.fork()
    if pid == 0:                              # pragma: no cover (child)
        code = 0
        try:
            fn()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def killed(status):
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


class Stop(Exception):
    """Raised by StopIO in place of an operation."""


class StopIO(StepIO):
    """Raises ``exc`` instead of the first operation named ``stop_on``."""

    def __init__(self, stop_on, exc, mbox_fd):
        super().__init__(mbox_fd=mbox_fd)
        self.stop_on = stop_on
        self.exc = exc

    def _step(self, name, detail, do, torn=None):
        if name == self.stop_on:
            raise self.exc
        return super()._step(name, detail, do, torn)


def committed_journal(box, deleted, chunk=mbox_update.COPY_CHUNK):
    """Leave a committed journal and an untouched mbox (stop at the first
    write into the mbox); return the journal's bytes."""
    io = StopIO("pwrite-mbox", Stop(), box.fd)
    with pytest.raises(Stop):
        apply_deletions(box.fd, box.index, deleted, box.journal, io=io, chunk=chunk)
    assert box.content() == box.before
    with open(box.journal, "rb") as f:
        return f.read()


# ---------------------------------------------------------- 1. basic results

SUBSETS = [
    ("first", {0}),
    ("last", {5}),
    ("middle", {2, 3}),
    ("scattered", {0, 2, 5}),
    ("all", {0, 1, 2, 3, 4, 5}),
    ("none", set()),
]


@pytest.mark.parametrize("with_appended", [False, True])
@pytest.mark.parametrize("name,deleted", SUBSETS, ids=[s[0] for s in SUBSETS])
def test_deletes_exactly_the_marked_messages(tmp_path, name, deleted, with_appended):
    spans = [message(i, body_lines=i) for i in range(6)]
    appended = [message(40, tag="new"), message(41, tag="new")] if with_appended else []
    box = Box(tmp_path, spans, appended)
    st0 = os.fstat(box.fd)
    kept, removed = apply_deletions(box.fd, box.index, deleted, box.journal)
    want = box.after(deleted)
    assert box.content() == want
    assert kept == 6 - len(deleted)
    assert removed == sum(len(spans[i]) for i in deleted)
    st1 = os.fstat(box.fd)
    assert (st1.st_ino, st1.st_mode, st1.st_uid) == (st0.st_ino, st0.st_mode, st0.st_uid)
    index = mbox.scan(box.fd)
    assert len(index) == len(spans) - len(deleted) + len(appended)
    assert box.leftovers() == []
    assert recover(box.reopen(), box.journal) == "none"
    box.close()


@SETTINGS
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=8),
       appended=st.integers(0, 3), data=st.data(),
       chunk=st.sampled_from([1, 7, 64, 1 << 20]))
def test_random_subsets_round_trip(tmp_path_factory, sizes, appended, data, chunk):
    tmp = tmp_path_factory.mktemp("rand")
    spans = [message(i, body_lines=n) for i, n in enumerate(sizes)]
    extra = [message(50 + i, tag="late") for i in range(appended)]
    deleted = data.draw(st.sets(st.integers(0, len(spans) - 1)))
    box = Box(tmp, spans, extra)
    kept, removed = apply_deletions(box.fd, box.index, deleted, box.journal,
                                    chunk=chunk)
    assert box.content() == box.after(deleted)
    assert kept == len(spans) - len(deleted)
    assert removed == sum(len(spans[i]) for i in deleted)
    assert box.leftovers() == []
    box.close()


def test_bad_message_numbers_are_a_programming_error(tmp_path):
    box = Box(tmp_path, [message(0)])
    with pytest.raises(ValueError):
        apply_deletions(box.fd, box.index, {1}, box.journal)
    with pytest.raises(ValueError):
        apply_deletions(box.fd, box.index, {-1}, box.journal)
    assert box.content() == box.before
    box.close()


def test_existing_journal_is_left_alone(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(3)])
    with open(box.journal, "wb") as f:
        f.write(b"someone else's")
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {1}, box.journal)
    assert not e.value.committed and e.value.code == "SYS/TEMP"
    assert box.content() == box.before
    with open(box.journal, "rb") as f:
        assert f.read() == b"someone else's"
    box.close()


def test_error_after_commit_is_finished_by_recover(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(4)], [message(9, tag="new")])
    io = StopIO("ftruncate", OSError(errno.EIO, "simulated I/O error"), box.fd)
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {1}, box.journal, io=io)
    assert e.value.committed and e.value.text == mbox_update.PENDING_TEXT
    assert recover(box.reopen(), box.journal) == "replayed"
    assert box.content() == box.after({1})
    assert box.leftovers() == []
    box.close()


# ------------------------------------------------------- 2. fault injection

SHAPES = {
    # name: (spans, deleted, appended during the session, chunk)
    "middle": ([message(i) for i in range(5)], {1, 3},
               [message(30, tag="new")], 1 << 20),
    "multichunk": ([message(i, body_lines=3) for i in range(8)], {0, 4, 7},
                   [message(31, tag="new"), message(32, tag="new")], 100),
    "cut_tail": ([message(i) for i in range(4)], {2, 3}, [], 1 << 20),
}


def count_steps(tmp, shape):
    spans, deleted, appended, chunk = SHAPES[shape]
    box = Box(tmp, spans, appended)
    io = StepIO(mbox_fd=box.fd)
    apply_deletions(box.fd, box.index, deleted, box.journal, io=io, chunk=chunk)
    assert box.content() == box.after(deleted)
    assert io.max_write <= max(chunk, mbox_update.COMMIT_OFFSET)
    box.close()
    return io.steps


def commit_step(steps):
    """1-based step that writes the commit record: from its completion on,
    a crash must end with the deletions done."""
    for k, (name, detail) in enumerate(steps, 1):
        if name == "pwrite-journal" and detail == mbox_update.COMMIT_OFFSET:
            return k
    raise AssertionError(steps)


def crash_then_recover(tmp, shape, k, mode, late=b"", recover_kill=None):
    """Kill an update at step k; optionally deliver ``late`` mail and kill a
    first recovery at step ``recover_kill``; recover; return (box, status)."""
    spans, deleted, appended, chunk = SHAPES[shape]
    box = Box(tmp, spans, appended)
    io = StepIO(kill_at=k, mode=mode, mbox_fd=box.fd)
    status = in_child(lambda: apply_deletions(box.fd, box.index, deleted,
                                              box.journal, io=io, chunk=chunk))
    assert killed(status), (k, mode, status)
    if late:
        box.append(late)                      # the MDA, after the crash
    fd = box.reopen()
    if recover_kill is not None:
        rio = StepIO(kill_at=recover_kill, mbox_fd=fd)
        status = in_child(lambda: recover(fd, box.journal, io=rio, chunk=chunk))
        assert killed(status), (k, recover_kill, status)
        fd = box.reopen()
    outcome = recover(fd, box.journal, chunk=chunk)
    return box, outcome


def check_outcome(box, outcome, deleted, done, late=b""):
    content = box.content()
    want = box.after(deleted) if done else box.before
    assert content == want + late
    assert outcome in ("none", "discarded", "replayed")
    assert box.leftovers() == []
    # Nothing split: the result scans to whole messages.
    nmsgs = len(box.spans) - (len(deleted) if done else 0) + len(box.appended)
    assert len(mbox.scan(box.fd)) == nmsgs + (1 if late else 0)
    assert recover(box.fd, box.journal) == "none"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sigkill_at_every_step(tmp_path_factory, shape):
    steps = count_steps(tmp_path_factory.mktemp("count"), shape)
    commit = commit_step(steps)
    deleted = SHAPES[shape][1]
    # 13 for a tail within one chunk; no data to copy: 11; each further
    # chunk adds a write to the journal and one to the mbox.
    assert len(steps) == {"middle": 13, "cut_tail": 11}.get(shape, len(steps))
    if shape == "multichunk":
        assert len(steps) > 20
    late = message(55, tag="late")
    runs = 0
    for k, (name, _) in enumerate(steps, 1):
        modes = ["before", "after"] + (["torn"] if name.startswith("pwrite") else [])
        for mode in modes:
            done = k > commit or (k == commit and mode == "after")
            for extra in (b"", late):
                tmp = tmp_path_factory.mktemp(f"k{k}{mode}")
                box, outcome = crash_then_recover(tmp, shape, k, mode, extra)
                check_outcome(box, outcome, deleted, done, extra)
                box.close()
                runs += 1
    assert runs >= 4 * len(steps)


def test_sigkill_during_recovery_too(tmp_path_factory):
    """Crash the update at k, deliver mail, crash the recovery at j (it has
    to carry the delivered mail into a new journal), recover again."""
    shape = "middle"
    steps = count_steps(tmp_path_factory.mktemp("count"), shape)
    commit = commit_step(steps)
    deleted = SHAPES[shape][1]
    late = message(56, tag="late")
    extended = 0
    for k in range(1, len(steps) + 1):
        # How many steps does this recovery take?
        spans, _, appended, chunk = SHAPES[shape]
        tmp = tmp_path_factory.mktemp(f"rc{k}")
        box = Box(tmp, spans, appended)
        io = StepIO(kill_at=k, mode="after", mbox_fd=box.fd)
        assert killed(in_child(lambda: apply_deletions(
            box.fd, box.index, deleted, box.journal, io=io)))
        box.append(late)
        rio = StepIO(mbox_fd=box.reopen())
        recover(box.fd, box.journal, io=rio)
        box.close()
        if any(name == "rename" for name, _ in rio.steps):
            extended += 1
        for j in range(1, len(rio.steps) + 1):
            tmp = tmp_path_factory.mktemp(f"r{k}_{j}")
            box, outcome = crash_then_recover(tmp, shape, k, "after", late,
                                              recover_kill=j)
            check_outcome(box, outcome, deleted, k >= commit, late)
            box.close()
    assert extended > 0                   # the appended-mail path was taken


# ----------------------------------------------------------- 3. disk full

@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700",
                    "tmpfs", str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        # A failed test may leave its descriptor open: detach lazily then.
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_on_state_directory(tmp_path, small_fs):
    state = os.path.join(small_fs, "1000")
    spans = [message(i, body_lines=150) for i in range(60)]   # ~600 KB
    box = Box(tmp_path, spans, [message(70, tag="new")], state=state)
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {0}, box.journal)
    assert not e.value.committed
    assert e.value.code == "SYS/TEMP" and e.value.text == mbox_update.FAILED_TEXT
    assert box.content() == box.before
    assert box.leftovers() == []
    # The same filesystem takes a journal that fits.
    apply_deletions(box.fd, box.index, {59}, box.journal)
    assert box.content() == box.after({59})
    assert box.leftovers() == []
    box.close()


def test_disk_full_with_the_mbox_on_the_same_small_filesystem(small_fs):
    spans = [message(i, body_lines=160) for i in range(30)]    # ~200 KB
    box = Box(small_fs, spans, state=os.path.join(small_fs, "state"))
    assert 160 * 1024 < os.path.getsize(box.path) < 256 * 1024
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {0, 1}, box.journal, chunk=4096)
    assert not e.value.committed
    assert box.content() == box.before
    assert box.leftovers() == []
    box.close()


# ------------------------------------------------------- 4. verify_unchanged

def test_verify_unchanged(tmp_path):
    spans = [message(i) for i in range(4)]
    box = Box(tmp_path, spans)
    assert verify_unchanged(box.fd, box.index)
    box.append(message(9, tag="new"))                 # an MDA delivery
    assert verify_unchanged(box.fd, box.index)

    # Same-length edit inside a message: boundaries hold, the edit is kept.
    data = box.content()
    same = data.replace(b"Subject: m2", b"Subject: M2")
    os.pwrite(box.fd, same, 0)
    assert verify_unchanged(box.fd, box.index)

    # An MUA adds a Status: header: offsets shift.
    os.ftruncate(box.fd, 0)
    os.pwrite(box.fd, data.replace(b"Subject: m1\n", b"Subject: m1\nStatus: RO\n"), 0)
    assert not verify_unchanged(box.fd, box.index)
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {0}, box.journal)
    assert e.value.text == mbox_update.CHANGED_TEXT and not e.value.committed
    assert box.leftovers() == []

    # Truncated below the indexed size.
    os.ftruncate(box.fd, 0)
    os.pwrite(box.fd, data[:box.index.size - 1], 0)
    assert not verify_unchanged(box.fd, box.index)

    # Replaced by rename / removed: our inode is no longer the mailbox.
    os.ftruncate(box.fd, 0)
    os.pwrite(box.fd, data, 0)
    assert verify_unchanged(box.fd, box.index)
    os.unlink(box.path)
    assert not verify_unchanged(box.fd, box.index)
    box.close()


def test_a_message_indexed_half_written_is_never_split_by_a_deletion(tmp_path):
    """A writer that holds neither lock popd takes was half-way through a
    message when the session scanned: the index ends inside it.  Deleting
    the message before it would keep the rest of that message (no ``From ``
    line) glued to another one; the update refuses instead, as for any
    change, and the file is untouched."""
    half = b"From late@example.org Thu Nov 26 10:00:00 2026\nSubject: late\n\nfirst half\n"
    box = Box(tmp_path, [message(0), message(1), half])
    box.append(b"second half\n\n")
    before = box.content()
    assert not verify_unchanged(box.fd, box.index)
    with pytest.raises(UpdateError) as e:
        apply_deletions(box.fd, box.index, {1}, box.journal)
    assert e.value.text == mbox_update.CHANGED_TEXT and not e.value.committed
    assert box.content() == before and box.leftovers() == []
    # Whole messages appended after a complete one are still kept.
    (tmp_path / "2").mkdir()
    box2 = Box(tmp_path / "2", [message(0), message(1)])
    box2.append(message(2, tag="new"))
    assert verify_unchanged(box2.fd, box2.index)
    box.close()
    box2.close()


def test_verify_rejects_a_file_that_is_no_longer_an_mbox(tmp_path):
    box = Box(tmp_path, [message(0), message(1)])
    os.pwrite(box.fd, b"X", 0)
    assert not verify_unchanged(box.fd, box.index)
    box.close()


# -------------------------------------------------- 5. recovery is defensive

def test_recover_without_journal(tmp_path):
    box = Box(tmp_path, [message(0)])
    assert recover(box.fd, box.journal) == "none"
    box.close()


def test_committed_journal_replays(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(5)], [message(8, tag="new")])
    committed_journal(box, {0, 3})
    assert recover(box.reopen(), box.journal) == "replayed"
    assert box.content() == box.after({0, 3})
    assert box.leftovers() == []
    box.close()


def test_journal_for_another_mailbox_is_stale(tmp_path):
    box = Box(tmp_path / "a", [message(i) for i in range(3)])
    journal = committed_journal(box, {1})
    other = Box(tmp_path / "b", [message(i) for i in range(3)])
    with open(other.journal, "wb") as f:
        f.write(journal)
    assert recover(other.fd, other.journal) == "stale"
    assert other.content() == other.before
    left = other.leftovers()
    assert len(left) == 1 and left[0].startswith("0123abcd.journal.stale-")
    box.close()
    other.close()


def test_missing_mailbox_makes_a_committed_journal_stale(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(3)])
    committed_journal(box, {1})
    assert recover(None, box.journal) == "stale"
    box.close()


def test_mailbox_rewritten_after_crash_is_not_touched(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(3)])
    committed_journal(box, {1})
    rewritten = box.before.replace(b"Subject: m0\n", b"Subject: m0\nStatus: O\n")
    os.pwrite(box.fd, rewritten, 0)
    assert recover(box.reopen(), box.journal) == "stale"
    assert box.content() == rewritten
    box.close()


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo", "leftover-new"])
def test_odd_journal_files(tmp_path, kind):
    box = Box(tmp_path, [message(i) for i in range(3)])
    if kind == "directory":
        os.mkdir(box.journal)
    elif kind == "symlink":
        os.symlink(box.path, box.journal)
    elif kind == "fifo":
        os.mkfifo(box.journal)
    else:
        committed_journal(box, {1})
        with open(box.journal + ".new", "wb") as f:
            f.write(b"half a journal")
    outcome = recover(box.fd, box.journal)
    if kind == "leftover-new":
        assert outcome == "replayed"
        assert box.content() == box.after({1})
        assert box.leftovers() == []
    else:
        assert outcome == "stale"
        assert box.content() == box.before
        assert not os.path.lexists(box.journal)
    box.close()


@SETTINGS
@given(garbage=st.binary(max_size=600))
def test_random_journals_are_dropped(tmp_path_factory, garbage):
    box = Box(tmp_path_factory.mktemp("g"), [message(i) for i in range(3)])
    with open(box.journal, "wb") as f:
        f.write(garbage)
    assert recover(box.fd, box.journal) in ("discarded", "stale")
    assert box.content() == box.before
    assert not os.path.lexists(box.journal)
    box.close()


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10 ** 6),
                                                  st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("cut"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=40)),
)


@SETTINGS
@given(mutation=MUTATIONS)
def test_mutated_journals(tmp_path_factory, mutation):
    box = Box(tmp_path_factory.mktemp("mut"), [message(i, body_lines=i) for i in range(4)],
              [message(20, tag="new")])
    journal = committed_journal(box, {1, 2})
    kind, arg = mutation
    data = bytearray(journal)
    if kind == "flip":
        for pos, xor in arg:
            data[pos % len(data)] ^= xor
    elif kind == "cut":
        data = data[:arg % len(data)]
    else:
        data += arg
    with open(box.journal, "wb") as f:
        f.write(data)
    outcome = recover(box.reopen(), box.journal)
    if bytes(data) == journal:
        assert outcome == "replayed" and box.content() == box.after({1, 2})
    else:
        assert outcome in ("discarded", "stale")
        assert box.content() == box.before
    assert not os.path.lexists(box.journal)
    box.close()


U64 = 2 ** 64 - 1


def near(value):
    return st.one_of(st.just(value), st.integers(0, U64),
                     st.integers(-3, 3).map(lambda d: max(0, min(U64, value + d))),
                     st.sampled_from([0, 1, 2 ** 62, 2 ** 63, U64]))


@SETTINGS
@given(data=st.data())
def test_forged_headers_with_valid_commit(tmp_path_factory, data):
    """Header fields rewritten and the commit record recomputed, as a hostile
    owner could: recover() never raises and touches the mbox only when the
    result is one of the two legitimate states."""
    box = Box(tmp_path_factory.mktemp("forge"), [message(i) for i in range(4)])
    journal = committed_journal(box, {2})
    fields = list(struct.unpack("<8sII5Q32s32s", journal[:120]))
    for i in range(1, 8):                     # version .. size_before
        fields[i] = data.draw(near(fields[i]), label=f"field{i}")
    if data.draw(st.booleans(), label="change digests"):
        fields[8] = data.draw(st.binary(min_size=32, max_size=32))
        fields[9] = data.draw(st.binary(min_size=32, max_size=32))
    version, flags = fields[1] & 0xFFFFFFFF, fields[2] & 0xFFFFFFFF
    header = struct.pack("<8sII5Q32s32s", fields[0], version, flags, *fields[3:])
    commit = b"popdcmit" + hashlib.sha256(b"popdcmit" + header).digest()
    with open(box.journal, "wb") as f:
        f.write(header + commit + journal[160:])
    outcome = recover(box.reopen(), box.journal)
    assert outcome in ("stale", "replayed")
    assert box.content() in (box.before, box.after({2}))
    if outcome == "stale":
        assert box.content() == box.before
    assert not os.path.lexists(box.journal)
    box.close()


def test_state_directory_mode_is_not_changed(tmp_path):
    box = Box(tmp_path, [message(i) for i in range(3)])
    os.chmod(box.state, 0o700)
    apply_deletions(box.fd, box.index, {0}, box.journal)
    assert stat.S_IMODE(os.stat(box.state).st_mode) == 0o700
    box.close()


# ------------------------------------- 6. the state files change with the mbox

def twins_maildrop(tmp):
    """A maildrop whose messages 1 and 2 have the same From line and
    headers (so their ids are a base and base-2), opened once so that the
    state directory remembers which copy holds which."""
    head = b"From twin@example.org Thu Nov 26 10:00:00 2026\nSubject: twin\n\n"
    path = os.path.join(str(tmp), "mbox")
    with open(path, "wb") as f:
        f.write(message(0) + head + b"first copy\n\n" + head + b"second copy\n\n"
                + message(3))
    state = os.path.join(str(tmp), "state")
    os.makedirs(os.path.join(state, str(os.getuid())))

    def session():
        return maildrop.Maildrop(path, os.getuid(), state).open()

    drop = session()
    ids = drop.ids()
    drop.close()
    assert ids[2] == ids[1] + "-2"
    return session, ids


def test_a_crash_at_any_step_of_an_update_never_moves_an_id(tmp_path_factory):
    """Deleting the first of two identical messages, killed at every step
    of the update: at the next open, the second copy keeps its id (the
    base-2 a client may already have), whether the deletion was done or
    not; it never takes the deleted copy's.  Before, the state was saved
    after the update, and a crash in between handed the kept copy the
    deleted one's id: a client would skip it, or delete it unread."""
    session, ids = twins_maildrop(tmp_path_factory.mktemp("count"))
    drop = session()
    io = StepIO(mbox_fd=drop.fd)
    real = mbox_update.apply_deletions
    mbox_update.apply_deletions = lambda *a, **kw: real(*a, io=io, **kw)
    try:
        drop.ids()
        drop.update({1})
    finally:
        mbox_update.apply_deletions = real
        drop.close()
    steps = len(io.steps)
    assert steps > 5
    for k in range(1, steps + 1):
        for mode in ("before", "after"):
            session, ids = twins_maildrop(tmp_path_factory.mktemp("k"))
            drop = session()

            def crash():
                io = StepIO(kill_at=k, mode=mode, mbox_fd=drop.fd)
                mbox_update.apply_deletions = lambda *a, **kw: real(*a, io=io, **kw)
                drop.ids()
                drop.update({1})
            assert killed(in_child(crash)), (k, mode)
            drop.close()
            after = session()
            try:
                now = after.ids()
                assert now in ([ids[0], ids[1], ids[2], ids[3]],
                               [ids[0], ids[2], ids[3]]), (k, mode, ids, now)
                assert not os.path.exists(after.pending_file)
            finally:
                after.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.booleans())
def test_a_pending_state_file_from_anyone_is_parsed_strictly(tmp_path, data, magic):
    """The owner can write <key>.pending: whatever it holds, it reads as
    None or as new contents for the three state files, never more."""
    path = str(tmp_path / "k.pending")
    with open(path, "wb") as f:
        f.write((b"popd-pending 1\n" if magic else b"") + data)
    files = state_files.read_bundle(path, {"uidl", "foreign", "retrieved"}, 1 << 20)
    assert files is None or (set(files) <= {"uidl", "foreign", "retrieved"}
                             and all(isinstance(v, bytes) for v in files.values()))
    state_files.write_bundle(path, {"uidl": data, "retrieved": b""})
    assert state_files.read_bundle(path, {"uidl", "retrieved"}, 1 << 20) == {
        "uidl": data, "retrieved": b""}
