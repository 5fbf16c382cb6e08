"""UID assignment: identical messages, deletions, hostile state files; the
fast base-id path against the line-by-line definition."""
import base64
import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd.mail import mbox, uidl

B1, B2 = "a" * 24, "b" * 24


def ref_base_id(head):
    """The definition (the original code): blake2b-120 over every line of
    the head with its trailing CRs dropped plus LF, status headers and
    their continuation lines left out; base32, lower case."""
    h = hashlib.blake2b(digest_size=15)
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                h.update(line.rstrip(b"\r") + b"\n")
            continue
        skipping = line.lower().startswith(uidl.STATUS_HEADERS)
        if not skipping:
            h.update(line.rstrip(b"\r") + b"\n")
    return base64.b32encode(h.digest()).decode("ascii").lower()


def ref_header_block(data, offset, start, end):
    """From line and headers, found by growing reads as the original did
    (4 KiB, then 16, then 64: HEAD_MAX)."""
    size = 4096
    while True:
        chunk = data[offset:offset + min(size, uidl.HEAD_MAX, end - offset)]
        body_from = start - offset
        at = body_from - 1 if body_from else 0
        found = [i for i in (chunk.find(b"\n\n", at), chunk.find(b"\n\r\n", at)) if i >= 0]
        if found or len(chunk) >= end - offset or size >= uidl.HEAD_MAX:
            return chunk[:min(found) + 1] if found else chunk
        size *= 4


HEAD_LINE = st.one_of(
    st.sampled_from([b"Subject: s", b"status: RO", b"Status: O", b"X-Status: A", b"X-UID: 3",
                     b"x-imapbase: 1 2", b"X-IMAP: 1", b"X-Keywords: $x", b"X-Mailer: m",
                     b" cont", b"\tcont", b"", b"\r", b"Received: x\r\r", b"\xe9 8-bit"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(HEAD_LINE, st.sampled_from([b"\n", b"\r\n"])), max_size=10),
       st.sampled_from([b"", b"\r", b"tail", b"Status: x"]))
def test_fast_base_id_is_the_definition(lines, tail):
    head = b"From x@y Thu Nov 26 10:00:00 2026\n" + b"".join(a + b for a, b in lines) + tail
    assert uidl.base_id(head) == ref_base_id(head)
    first = lines[0][0] if lines else tail             # heads that are not From lines too
    assert uidl.base_id(first) == ref_base_id(first)


def test_ids_did_not_change():
    # Clients remember ids: these are the values popd has always given.
    head = b"From x@y Thu Nov 26 10:00:00 2026\nFrom: a\nSubject: s\n"
    crlf = (b"From x@y Thu Nov 26 10:00:00 2026\r\nFrom: a\r\nStatus: RO\r\n"
            b"X-Keywords: $x\r\n continued\r\nSubject: s\r\r\n")
    assert uidl.base_id(head) == uidl.base_id(crlf) == "midlhchig4l4edds26rbxkdp"


BODY_LINE = st.sampled_from([b"", b"\r", b"x", b"From: inside", b"Subject: y", b"." * 3,
                             b"L" * 3000])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(HEAD_LINE, max_size=6), st.booleans(),
                          st.lists(BODY_LINE, max_size=6),
                          st.sampled_from([b"\n", b"\r\n"])), max_size=8),
       st.sampled_from([64, 700, 1 << 20]), st.sampled_from([40, 300, 64 * 1024]))
def test_compute_bases_matches_header_block_definition(tmp_path_factory, messages, run,
                                                       head_max):
    data = b"".join(b"From s@x Thu Nov 26 10:00:00 2026" + eol + eol.join(heads)
                    + ((eol + eol) if blank else eol) + eol.join(body) + b"\n\n"
                    for heads, blank, body, eol in messages)
    path = tmp_path_factory.mktemp("b") / "m"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    index = mbox.scan(fd)
    saved = uidl.RUN, uidl.HEAD_MAX
    uidl.RUN, uidl.HEAD_MAX = run, head_max            # small reads: every re-read path
    try:
        want = [ref_base_id(ref_header_block(data, index.offset(n), index.start(n),
                                             index.end(n))) for n in range(len(index))]
        assert uidl.compute_bases(fd, index) == want
        assert [uidl.base_id(uidl.header_block(fd, index, n)) for n in range(len(index))] == want
        for first in range(len(index) + 1):
            assert uidl.compute_bases(fd, index, first) == want[first:]
    finally:
        uidl.RUN, uidl.HEAD_MAX = saved
        os.close(fd)


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
