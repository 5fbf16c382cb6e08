"""EXPIRE (mail.expire_days) on the real maildrop code: what is due when,
what a session records, and hostile state files."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd.mail import expiry, maildrop, mbox

DAY = expiry.DAY


def message(i):
    return (b"From bob@example.org Thu Dec  3 16:00:%02d 2026\n" % i
            + b"From: bob@example.org\nSubject: m%d\n\nbody %d\n\n" % (i, i))


class Box:
    def __init__(self, tmp_path, days, count=4):
        self.path = tmp_path / "mbox"
        self.path.write_bytes(b"".join(message(i) for i in range(count)))
        self.state = tmp_path / "state"
        (self.state / str(os.getuid())).mkdir(parents=True)
        self.days = days
        self.now = 1_800_000_000.0

    def session(self, monkeypatch, retrieve=(), delete=(), quit=True):
        """One session at self.now; (ids it saw, numbers expired at QUIT)."""
        monkeypatch.setattr(maildrop.time, "time", lambda: self.now)
        drop = maildrop.Maildrop(str(self.path), os.getuid(), str(self.state),
                                 expire_days=self.days).open()
        try:
            ids = drop.ids()
            expired = drop.expiring(set(retrieve)) - set(delete)
            if quit:
                drop.update(set(delete) | expired, set(retrieve))
            return ids, expired
        finally:
            drop.close()

    def subjects(self):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            index = mbox.scan(fd)
            return [b"".join(mbox.iter_top(fd, index, n, 0)).split(b"Subject: ")[1][:2]
                    for n in range(len(index))]
        finally:
            os.close(fd)

    def retrieved_file(self):
        return maildrop.Maildrop(str(self.path), os.getuid(), str(self.state)).retrieved_file


def test_retrieved_mail_goes_after_the_days_counted_from_its_first_retrieval(
        tmp_path, monkeypatch):
    box = Box(tmp_path, days=3)
    ids, expired = box.session(monkeypatch, retrieve={0, 2})
    assert expired == set() and box.subjects() == [b"m0", b"m1", b"m2", b"m3"]
    assert expiry.load(box.retrieved_file()) == {ids[0]: int(box.now), ids[2]: int(box.now)}
    box.now += 3 * DAY - 1                       # a second early: nothing goes
    again, expired = box.session(monkeypatch, retrieve={0, 1})
    assert again == ids and expired == set()
    first_seen = expiry.load(box.retrieved_file())
    assert first_seen[ids[0]] == int(box.now) - 3 * DAY + 1    # the first retrieval counts
    box.now += 1
    with open(box.path, "ab") as f:
        f.write(message(4))                      # delivered meanwhile
    _, expired = box.session(monkeypatch)        # a session that retrieves nothing
    assert expired == {0, 2}
    assert box.subjects() == [b"m1", b"m3", b"m4"]
    assert set(expiry.load(box.retrieved_file())) == {ids[1]}


def test_expire_zero_removes_what_the_session_retrieved_when_it_quits(tmp_path, monkeypatch):
    box = Box(tmp_path, days=0)
    _, expired = box.session(monkeypatch, retrieve={1}, delete={3})
    assert expired == {1} and box.subjects() == [b"m0", b"m2"]


def test_a_session_that_does_not_quit_records_nothing(tmp_path, monkeypatch):
    box = Box(tmp_path, days=0)
    box.session(monkeypatch, retrieve={0, 1}, quit=False)
    assert not os.path.exists(box.retrieved_file())
    assert box.subjects() == [b"m0", b"m1", b"m2", b"m3"]


def test_without_expire_days_nothing_is_recorded_or_removed(tmp_path, monkeypatch):
    box = Box(tmp_path, days=None)
    _, expired = box.session(monkeypatch, retrieve={0, 1, 2, 3})
    assert expired == set() and not os.path.exists(box.retrieved_file())
    assert len(box.subjects()) == 4


def test_hostile_state_files_are_ignored(tmp_path):
    path = tmp_path / "retrieved"
    for bad in (b"id\n", b"id 12 13\n", b"a 1\na 2\n", b"has space 1\n", b"\xff 1\n",
                b"x" * 71 + b" 1\n", b"id 1234567890123\n",
                b"a 1\n" * 10 + b"b" * (expiry.STATE_MAX) + b" 1\n"):
        path.write_bytes(bad)
        assert expiry.load(str(path)) == {}, bad
    path.write_bytes(b"uid-1 5\nuid-2 7\n")
    assert expiry.load(str(path)) == {"uid-1": 5, "uid-2": 7}
    os.unlink(path)
    # A link to a valid file is not followed (O_NOFOLLOW): the owner could
    # point it anywhere.
    (tmp_path / "elsewhere").write_bytes(b"uid-1 5\n")
    assert expiry.load(str(tmp_path / "elsewhere")) == {"uid-1": 5}
    os.symlink(tmp_path / "elsewhere", path)
    assert expiry.load(str(path)) == {}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_state_file_loads_as_a_mapping_of_valid_ids(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("r") / "retrieved"
    path.write_bytes(data)
    for uid, when in expiry.load(str(path)).items():
        assert 1 <= len(uid) <= 70 and " " not in uid and isinstance(when, int)
