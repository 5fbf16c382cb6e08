"""Property and unit tests for popd.mail.mbox (scanner, RETR/TOP streaming).

Expectations are computed by small, line-by-line reference functions in this
file from the bytes the test wrote, never from popd.mail.mbox itself nor from
``mailbox.mbox(...)[i].as_bytes()``.
"""

from __future__ import annotations

import mailbox
import os
import re
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from popd.mail import mbox

FROM_LINE = b"From sender@example.org Mon Jan  1 00:00:00 2024"

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---------------------------------------------------------------- references

def ref_strip_sep(raw: bytes) -> bytes:
    """Remove the one separator line end (CRLF or LF) of a raw region."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def ref_scan(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(offset, start, length, content) per message, the naive way."""
    if not data:
        return []
    assert data.startswith(b"From ")
    offs = [0] + [m.start() + 1 for m in re.finditer(rb"(?=\nFrom )", data)]
    out = []
    for a, b in zip(offs, offs[1:] + [len(data)]):
        nl = data.find(b"\n", a, b)
        if nl < 0:
            out.append((a, b, 0, b""))
            continue
        content = ref_strip_sep(data[nl + 1:b])
        out.append((a, nl + 1, len(content), content))
    return out


def ref_lines(content: bytes) -> list[bytes]:
    """Transmitted lines, each ending with CRLF, before dot-stuffing."""
    parts = content.split(b"\n")
    out = []
    for ln in parts[:-1]:
        out.append((ln[:-1] if ln.endswith(b"\r") else ln) + b"\r\n")
    if parts[-1] or not content:
        out.append(parts[-1] + b"\r\n")
    return out


def ref_transmit(content: bytes, stuff: bool = True) -> bytes:
    lines = ref_lines(content)
    if stuff:
        lines = [b"." + ln if ln.startswith(b".") else ln for ln in lines]
    return b"".join(lines)


def ref_top(content: bytes, n: int) -> bytes:
    """Headers, blank line and n body lines of content (raw bytes)."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", content)
    for i, ln in enumerate(lines):
        if ln in (b"\n", b"\r\n"):
            return b"".join(lines[:i + 1 + n])
    return content


def check_wire(out: bytes, content: bytes, octets: int) -> None:
    """Structural RFC 1939 checks on one transmitted message."""
    assert out.endswith(b"\r\n")
    assert out.count(b"\n") == out.count(b"\r\n"), "bare LF on the wire"
    lines = out[:-2].split(b"\r\n")
    unstuffed = []
    for ln in lines:
        if ln.startswith(b"."):
            assert ln.startswith(b".."), f"unstuffed dot line {ln!r}"
            ln = ln[1:]
        unstuffed.append(ln)
    plain = b"\r\n".join(unstuffed) + b"\r\n"
    assert len(plain) == octets
    expect = content.replace(b"\r\n", b"\n")
    if not content.endswith(b"\n"):
        expect += b"\n"
    assert plain.replace(b"\r\n", b"\n") == expect


# ---------------------------------------------------------------- strategies

NASTY = [
    b"From foo@bar Mon Jan  1 00:00:00 2024", b"From ", b"From:x", b"FROM x",
    b">From quoted", b">>From twice", b"x From inside", b" From space",
    b"\rFrom after-cr", b".", b"..", b"...", b". x", b".From dot", b"",
    b"\r", b"\r\r", b"a\rb", b"tail\r", b"\x00\xff\x80\xe9 8-bit",
    b"Subject: hello", b"X: y",
]

line_st = st.one_of(
    st.sampled_from(NASTY),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.integers(500, 5000).map(lambda n: b"L" * n),
)
eol_st = st.sampled_from([b"\n", b"\n", b"\r\n"])


def _quote(content: bytes) -> bytes:
    # What MDAs do: a body line starting with "From " becomes ">From ".
    if content.startswith(b"From "):
        content = b">" + content
    return content.replace(b"\nFrom ", b"\n>From ")


@st.composite
def content_st(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return b""
    lines = draw(st.lists(st.tuples(line_st, eol_st), max_size=12))
    body = b"".join(a + b for a, b in lines)
    if draw(st.booleans()):
        body += draw(line_st)           # no trailing newline
    if kind == 1:
        return _quote(body)
    heads = draw(st.lists(st.tuples(st.sampled_from(
        [b"Subject: s", b"From: a@b", b"X-Dots: ...", b"Received: x\r"]),
        eol_st), max_size=4))
    blank = draw(st.sampled_from([b"\n", b"\r\n"]))
    return _quote(b"".join(a + b for a, b in heads) + blank + body)


mailbox_st = st.lists(content_st(), max_size=6)


# ------------------------------------------------------------------- helpers

def _tmpfile(data: bytes) -> tuple[int, str]:
    fd, path = tempfile.mkstemp(prefix="popd-mbox-test-")
    os.write(fd, data)
    return fd, path


class Mbox:
    def __init__(self, data: bytes):
        self.data = data
        self.fd, self.path = _tmpfile(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        os.unlink(self.path)


def write_raw(contents, sep: bytes, from_eol: bytes = b"\n") -> bytes:
    return b"".join(FROM_LINE + from_eol + c + sep for c in contents)


def check_all(fd: int, data: bytes, tiny_chunk: int, top_lines: int):
    ix = mbox.scan(fd)
    ref = ref_scan(data)
    assert len(ix) == len(ref)
    assert ix.size == len(data)
    small = tiny_chunk if len(data) < 20000 else tiny_chunk + 4000
    assert mbox.scan(fd, chunk=small) == ix
    assert mbox.scan(fd, size=len(data), chunk=small + 1) == ix
    for n, (off, start, length, content) in enumerate(ref):
        assert ix.entry(n) == (off, start, length, ix.octets(n))
        assert os.pread(fd, length, start) == content
        assert ix.octets(n) == len(ref_transmit(content, stuff=False))
        assert ix.octets(n) == mbox.octet_count(content)
        out = b"".join(mbox.iter_message(fd, ix, n))
        assert out == ref_transmit(content)
        check_wire(out, content, ix.octets(n))
        pieces = list(mbox.iter_message(fd, ix, n, chunk=tiny_chunk))
        assert b"".join(pieces) == out
        assert all(len(p) <= 2 * tiny_chunk + 2 for p in pieces)
        for lines in (0, top_lines, 10 ** 9):
            top = b"".join(mbox.iter_top(fd, ix, n, lines))
            assert top == ref_transmit(ref_top(content, lines)), lines
            assert b"".join(mbox.iter_top(fd, ix, n, lines,
                                          chunk=tiny_chunk)) == top
        assert b"".join(mbox.iter_top(fd, ix, n, 10 ** 9)) == out
    assert ix.total_octets() == sum(len(ref_transmit(c, False))
                                    for *_, c in ref)
    return ix, ref


# ------------------------------------------------------------ property tests

@SETTINGS
@given(contents=mailbox_st, from_eol=st.sampled_from([b"\n", b"\r\n"]),
       tiny=st.integers(1, 16), top=st.integers(0, 5))
def test_raw_lf_separator(contents, from_eol, tiny, top):
    data = write_raw(contents, b"\n", from_eol)
    with Mbox(data) as m:
        ix, ref = check_all(m.fd, data, tiny, top)
    assert len(ix) == len(contents)
    for c, (*_, got) in zip(contents, ref):
        # The format decision: content round-trips, except that a content
        # ending in a bare CR loses it to the CRLF separator rule.
        if c.endswith(b"\r"):
            assert got == c[:-1]
        else:
            assert got == c


@SETTINGS
@given(contents=mailbox_st, tiny=st.integers(1, 16), top=st.integers(0, 5))
def test_raw_without_separator(contents, tiny, top):
    # A writer that omits the blank line: only possible after a final LF.
    contents = [c if c.endswith(b"\n") else c + b"\n" for c in contents]
    data = write_raw(contents, b"")
    with Mbox(data) as m:
        ix, ref = check_all(m.fd, data, tiny, top)
        assert len(ix) == len(contents)
        for n, c in enumerate(contents):
            # The message's own last line end was taken as the separator.
            # Nothing on the wire changes, unless the message ended with an
            # empty line: that one is indistinguishable from a separator.
            wire = b"".join(mbox.iter_message(m.fd, ix, n))
            if ref_strip_sep(c).endswith(b"\n"):
                assert wire == ref_transmit(ref_strip_sep(c))
            else:
                assert wire == ref_transmit(c)


@SETTINGS
@given(contents=mailbox_st, tiny=st.integers(1, 16), top=st.integers(0, 5))
def test_raw_crlf_mbox(contents, tiny, top):
    data = write_raw(contents, b"\r\n", b"\r\n")
    with Mbox(data) as m:
        ix, ref = check_all(m.fd, data, tiny, top)
    assert [c for *_, c in ref] == contents


@SETTINGS
@given(contents=mailbox_st, tiny=st.integers(1, 16), top=st.integers(0, 5))
def test_written_by_python_mailbox(contents, tiny, top):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mbox")
        mb = mailbox.mbox(path)
        mb.lock()
        for c in contents:
            mb.add(c)
        mb.flush()
        mb.unlock()
        mb.close()
        with open(path, "rb") as f:
            data = f.read()
        fd = os.open(path, os.O_RDONLY)
        try:
            ix, ref = check_all(fd, data, tiny, top)
        finally:
            os.close(fd)
        assert len(ix) == len(contents) == len(mailbox.mbox(path))
    # mailbox.mbox appends a LF to a message without one; else unchanged.
    expect = [c if c.endswith(b"\n") else c + b"\n" for c in contents]
    assert [c for *_, c in ref] == expect


@SETTINGS
@given(data=st.binary(max_size=300), tiny=st.integers(1, 16))
def test_arbitrary_bytes_after_from(data, tiny):
    # Any file starting with "From " is accepted and indexed consistently.
    data = b"From " + data
    with Mbox(data) as m:
        check_all(m.fd, data, tiny, 1)


@SETTINGS
@given(contents=mailbox_st, cut=st.integers(0, 10 ** 6))
def test_prefix_scan_size(contents, cut):
    data = write_raw(contents, b"\n")
    assume(data)
    size = cut % (len(data) + 1)
    assume(size == 0 or size >= 5)
    with Mbox(data + b"From appended\nnew mail\n\n") as m:
        ix = mbox.scan(m.fd, size=size)
        assert ix.size == size
        assert mbox.scan(m.fd, size=size, chunk=3) == ix
        ref = ref_scan(data[:size])
        assert [(ix.offset(n), ix.start(n), ix.length(n))
                for n in range(len(ix))] == [r[:3] for r in ref]


# -------------------------------------------------------- exhaustive borders

def test_every_alignment_every_small_chunk():
    """A "From " line at every offset relative to every small chunk size.

    This is the research note's bug: a boundary exactly at a chunk edge.
    """
    msgs = [b"x" * k + b"\n" for k in range(0, 12)]
    msgs += [b"x" * k + b"\r\ny\r\n" for k in range(0, 12)]
    msgs += [b"\r\n" * k for k in range(0, 4)] + [b"a\r", b".\n.", b""]
    data = b"".join(b"From a\n" + c + b"\n" for c in msgs)
    data += b"From b\r\nFrom c\nFrom d\r\n\r\nFrom e"
    with Mbox(data) as m:
        ref = mbox.scan(m.fd)
        assert len(ref) == len(ref_scan(data))
        for chunk in range(1, 40):
            assert mbox.scan(m.fd, chunk=chunk) == ref, chunk
        check_all(m.fd, data, 1, 1)


def test_many_near_miss_lines():
    """Lines like "From:" / "Fromage" (not separators) in bulk, any chunk."""
    body = b"".join(b"From:%d\nFromage\n\rFrom x\n" % k for k in range(40))
    msgs = [body, b"From:\n" * 30, body + b"From:", b"x\nFrom"]
    data = b"".join(b"From a\n" + c + b"\n" for c in msgs)
    with Mbox(data) as m:
        ref = ref_scan(data)
        assert len(ref) == 4
        ix = mbox.scan(m.fd)
        assert [ix.entry(n)[:3] for n in range(4)] == [r[:3] for r in ref]
        for chunk in list(range(1, 40)) + [100, 257, 1000, 4096]:
            assert mbox.scan(m.fd, chunk=chunk) == ix, chunk
        check_all(m.fd, data, 3, 2)


# ------------------------------------------------------- format decisions

def _index(data: bytes, **kw):
    with Mbox(data) as m:
        ix = mbox.scan(m.fd, **kw)
        msgs = [b"".join(mbox.iter_message(m.fd, ix, n))
                for n in range(len(ix))]
    return ix, msgs


def test_empty_file_is_empty_mailbox():
    ix, msgs = _index(b"")
    assert len(ix) == 0 and ix.size == 0 and ix.total_octets() == 0


@pytest.mark.parametrize("data", [
    b"garbage\nFrom a\nx\n", b"\nFrom a\nx\n", b"From", b"from a\n",
    b">From a\n", b" From a\n", b"Return-Path: <a@b>\n\nbody\n",
])
def test_not_an_mbox(data):
    with pytest.raises(mbox.MboxFormatError):
        _index(data)


def test_from_line_without_lf_is_empty_message():
    ix, msgs = _index(b"From a\nbody\n\nFrom truncated")
    assert len(ix) == 2
    assert ix.entry(1) == (13, 27, 0, 2)
    assert msgs == [b"body\r\n", b"\r\n"]


def test_consecutive_from_lines():
    ix, msgs = _index(b"From a\nFrom b\nx\n")
    assert msgs == [b"\r\n", b"x\r\n"]
    assert [ix.octets(n) for n in range(2)] == [2, 3]


def test_separator_and_octets():
    data = (b"From a Mon Jan  1 00:00:00 2024\n"
            b"Subject: s\n\n.dot\nline\r\nlast")
    data += b"\n\nFrom b\n"
    ix, msgs = _index(data)
    assert msgs[0] == b"Subject: s\r\n\r\n..dot\r\nline\r\nlast\r\n"
    assert ix.octets(0) == len(msgs[0]) - 1          # stuffing not counted
    assert ix.length(0) == len(b"Subject: s\n\n.dot\nline\r\nlast\n")
    assert ix.end(0) == ix.offset(1) and ix.end(1) == ix.size
    assert msgs[1] == b"\r\n" and ix.octets(1) == 2


def test_crlf_separator_is_stripped_whole():
    ix, msgs = _index(b"From a\r\nA: b\r\n\r\nbody\r\n\r\nFrom b\r\nc\r\n\r\n")
    assert msgs == [b"A: b\r\n\r\nbody\r\n", b"c\r\n"]


def test_size_beyond_eof_is_changed_error():
    with Mbox(b"From a\nx\n") as m:
        with pytest.raises(mbox.MboxChangedError):
            mbox.scan(m.fd, size=100)
        ix = mbox.scan(m.fd)
        os.ftruncate(m.fd, 5)
        with pytest.raises(mbox.MboxChangedError):
            list(mbox.iter_message(m.fd, ix, 0))


def test_top_details():
    data = (b"From a\nA: 1\r\nB: 2\n\nl1\n.l2\nl3\n\n"
            b"From b\nno-blank-line\nstill headers\n\n"
            b"From c\n\nbody only\n")
    with Mbox(data) as m:
        ix = mbox.scan(m.fd)

        def top(n, k):
            return b"".join(mbox.iter_top(m.fd, ix, n, k))
        assert top(0, 0) == b"A: 1\r\nB: 2\r\n\r\n"
        assert top(0, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n"
        assert top(0, 99) == b"".join(mbox.iter_message(m.fd, ix, 0))
        assert top(1, 0) == b"no-blank-line\r\nstill headers\r\n"
        assert top(2, 0) == b"\r\n"
        assert top(2, 1) == b"\r\nbody only\r\n"
        with pytest.raises(ValueError):
            top(0, -1)
        with pytest.raises(IndexError):
            top(3, 0)


@SETTINGS
@given(lines=st.lists(st.tuples(st.sampled_from([b".", b"..", b".x", b"x", b"", b"\r",
                                                 b"\r.", b"x.", b"From x"]),
                                eol_st), max_size=40),
       tail=st.sampled_from([b"", b".", b"\r"]), chunk=st.integers(1, 9))
def test_dot_lines_at_every_chunk_boundary(lines, tail, chunk):
    # Dot-stuffing (a regex) and the CR pass (only for chunks holding a
    # CR) must agree with the line-by-line reference wherever a chunk
    # boundary falls: between LF and dot, between CR and LF, after a bare CR.
    data = FROM_LINE + b"\n" + _quote(b"".join(a + b for a, b in lines) + tail) + b"\n"
    (_, _, _, content), = ref_scan(data)
    with Mbox(data) as m:
        ix = mbox.scan(m.fd)
        for size in (chunk, chunk + 1, mbox.SEND_CHUNK):
            out = b"".join(mbox.iter_message(m.fd, ix, 0, chunk=size))
            assert out == ref_transmit(content)
            check_wire(out, content, ix.octets(0))


def test_a_message_of_one_dot_line_is_stuffed_and_sent_without_terminator():
    with Mbox(b"From a\n.\n") as m:
        ix = mbox.scan(m.fd)
        wire = b"".join(mbox.iter_message(m.fd, ix, 0))
    assert wire == b"..\r\n"          # the POP3 layer adds ".\r\n" (protocol.TERMINATOR)


def test_big_message_streams_in_bounded_pieces():
    body = b"\n.".join([b"x" * 100] * 50000) + b"\n"        # ~5 MB
    with Mbox(b"From a\n" + body + b"\n") as m:
        ix = mbox.scan(m.fd, chunk=1 << 16)
        assert len(ix) == 1 and ix.length(0) == len(body)
        total = 0
        for piece in mbox.iter_message(m.fd, ix, 0, chunk=1 << 14):
            assert len(piece) <= 2 * (1 << 14) + 2
            total += len(piece)
        assert total == ix.octets(0) + body.count(b"\n.")
        assert ix.octets(0) == len(body) + body.count(b"\n")


def test_index_is_compact():
    data = b"From a\nx\n\n" * 20000
    with Mbox(data) as m:
        ix = mbox.scan(m.fd)
    assert len(ix) == 20000
    cols = ix.columns()
    assert all(c.typecode == "q" for c in cols)
    per_msg = sum(sys.getsizeof(c) for c in cols) / len(ix)
    assert per_msg < 48
