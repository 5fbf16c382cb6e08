"""UID assignment: identical messages, deletions, hostile state files."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd import mbox, uidl

B1, B2 = "a" * 24, "b" * 24


def test_status_headers_do_not_change_the_base():
    plain = b"From x@y Thu Nov 26 10:00:00 2026\nFrom: a\nSubject: s\n"
    marked = (b"From x@y Thu Nov 26 10:00:00 2026\nFrom: a\nStatus: RO\nX-Keywords: $x\n"
              b" continued\nSubject: s\nX-IMAPbase: 1 2\nX-UID: 9\n")
    assert uidl.base_id(plain) == uidl.base_id(marked)
    assert uidl.base_id(plain) != uidl.base_id(plain.replace(b"Subject: s", b"Subject: t"))


def test_identical_messages_and_deletion():
    ids, state = uidl.assign([B1, B1, B2], {})
    assert ids == [B1, B1 + "-2", B2]
    state = uidl.after_deletion(ids, {0}, state)
    ids2, state2 = uidl.assign([B1, B2], state)
    assert ids2 == [B1 + "-2", B2]
    ids3, _ = uidl.assign([B1, B2, B1], state2)
    assert ids3 == [B1 + "-2", B2, B1 + "-3"]


def test_both_copies_deleted_never_reuses_an_id():
    ids, state = uidl.assign([B1, B1], {})
    state = uidl.after_deletion(ids, {0, 1}, state)
    ids2, _ = uidl.assign([B1], state)
    assert ids2 == [B1 + "-3"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([B1, B2, "c" * 24]), max_size=12), st.data())
def test_ids_unique_and_survivors_stable(bases, data):
    ids, state = uidl.assign(bases, {})
    assert len(set(ids)) == len(ids)
    deleted = set(data.draw(st.sets(st.integers(0, max(0, len(bases) - 1)))) if bases else set())
    deleted &= set(range(len(bases)))
    new_state = uidl.after_deletion(ids, deleted, state)
    kept = [b for i, b in enumerate(bases) if i not in deleted]
    ids2, _ = uidl.assign(kept, new_state)
    assert ids2 == [u for i, u in enumerate(ids) if i not in deleted]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_state_files_are_ignored_or_parsed(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("s") / "x.uidl"
    path.write_bytes(data)
    state = uidl.load_state(str(path))
    assert isinstance(state, dict)
    ids, _ = uidl.assign([B1, B1], state)
    assert len(set(ids)) == 2 and all(1 <= len(u) <= 70 for u in ids)


def test_state_with_repeated_ids_is_ignored(tmp_path):
    path = tmp_path / "x.uidl"
    path.write_text(f"{B1} 5 {B1}-2 {B1}-2\n")
    assert uidl.load_state(str(path)) == {}


def test_state_round_trip(tmp_path):
    state = {B1: (4, [B1 + "-2", B1 + "-3"]), B2: (3, [])}
    path = str(tmp_path / "k.uidl")
    uidl.save_state(path, state)
    assert uidl.load_state(path) == state
    uidl.save_state(path, {})
    assert not os.path.exists(path)


def test_header_block_reads_only_headers(tmp_path):
    data = (b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\n" + b"body\n" * 5000 + b"\n"
            b"From c@d Thu Nov 26 10:00:00 2026\nSubject: y\n\nz\n")
    path = tmp_path / "m"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    index = mbox.scan(fd)
    assert uidl.header_block(fd, index, 0) == b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n"
    assert uidl.header_block(fd, index, 1) == b"From c@d Thu Nov 26 10:00:00 2026\nSubject: y\n"
    os.close(fd)
