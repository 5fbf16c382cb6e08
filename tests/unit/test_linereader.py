"""The one place client bytes enter (popd/pop3/linereader.py), against a model.

The model (tests/stubs.py, model_lines): a stream is cut at each LF; a
segment of n bytes is a line if n + 1 (its LF) fits the limit, with one
trailing CR dropped, and OVERLONG otherwise; an unterminated tail is lost
when the stream ends (but is answered OVERLONG first once it has reached
the limit).  However TCP cuts the stream into recv() chunks, the reader
must give exactly that, hold at most one receive buffer plus one line,
and drain an overlong line without storing it.
"""
import socket
import threading
import time

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from popd import limits
from popd.pop3.linereader import (
    MAX_DRAIN,
    OVERLONG,
    RECV_SIZE,
    Disconnected,
    LineReader,
    Timeout,
    TooLong,
)
from tests.stubs import WOULD_BLOCK, ScriptedSocket, model_lines, split

LIMIT = limits.MAX_COMMAND_LINE
FAR = 3600.0                          # a deadline that never passes in a test


def future():
    return time.monotonic() + FAR


class Watched(ScriptedSocket):
    """Records the most the reader held (its buffer plus the chunk being
    handed to it) at every recv()."""

    def __init__(self, chunks):
        super().__init__(chunks)
        self.reader = None
        self.peak = 0

    def recv(self, n):
        assert n == RECV_SIZE
        data = super().recv(n)
        self.peak = max(self.peak, len(self.reader.buf) + len(data))
        return data


def read_all(sock, limit=LIMIT, initial=b""):
    reader = LineReader(sock, limit, initial)
    if isinstance(sock, Watched):
        sock.reader = reader
    lines = []
    while True:
        try:
            lines.append(reader.read_line(future()))
        except TooLong:
            lines.append(TooLong)
            return lines, reader
        except Disconnected:
            return lines, reader
        assert len(reader.buf) < limit + RECV_SIZE


# Lines: short ones, ones around the limit, overlong ones (kept below
# MAX_DRAIN so they are drained, not fatal), with CRLF or bare LF.
line_bodies = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=LIMIT - 4, max_size=LIMIT + 2),
    st.binary(min_size=LIMIT + 1, max_size=3 * RECV_SIZE),
).map(lambda b: b.replace(b"\n", b"."))
lines = st.lists(st.tuples(line_bodies, st.sampled_from([b"\r\n", b"\n"])), max_size=12)
streams = lines.map(lambda ls: b"".join(body + end for body, end in ls))


@st.composite
def chunked(draw, stream_strategy=streams):
    """A stream and one way recv() might cut it (some cuts would block)."""
    data = draw(stream_strategy)
    cuts = draw(st.lists(st.integers(0, max(0, len(data))), max_size=30))
    chunks = split(data, cuts)
    blocks = draw(st.lists(st.integers(0, len(chunks)), max_size=4))
    for at in sorted(blocks, reverse=True):
        chunks.insert(at, WOULD_BLOCK)
    return data, chunks


@settings(deadline=None)
@given(chunked())
@example((b"USER a\r\nPASS b\r\n", [b"US", b"ER a\r", b"\nPASS b\r\n"]))
@example((b"x" * (LIMIT - 2) + b"\r\n", [b"x" * (LIMIT - 2) + b"\r", b"\n"]))   # exactly fits
@example((b"x" * (LIMIT - 1) + b"\r\nNOOP\r\n", [b"x" * (LIMIT - 1), b"\r\nNOOP\r\n"]))
@example((b"x" * LIMIT + b"\nNOOP\n", [b"x" * LIMIT, b"\nNOOP\n"]))
def test_any_split_gives_the_model_lines(case):
    data, chunks = case
    sock = Watched(chunks)
    got, reader = read_all(sock)
    assert got == model_lines(data, LIMIT)
    # Never more than one receive buffer plus one line held at once.
    assert sock.peak <= LIMIT + RECV_SIZE
    sock.close()


@given(chunked(streams.map(lambda s: s[:-1] if s else s)))
def test_an_unterminated_tail_is_not_a_line(case):
    data, chunks = case
    got, _ = read_all(ScriptedSocket(chunks))
    assert got == model_lines(data, LIMIT)


@given(st.integers(LIMIT + 1, 4 * RECV_SIZE), st.integers(1, RECV_SIZE),
       st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), min_size=1,
                max_size=5))
def test_overlong_is_answered_at_once_and_the_next_lines_survive(length, chunk, after):
    """OVERLONG comes as soon as the limit is passed, long before the LF
    arrives; what follows the LF is intact."""
    rest = b"".join(a + b"\r\n" for a in after)
    data = b"A" * length + b"\r\n" + rest
    sock = ScriptedSocket(split(data, range(chunk, len(data), chunk)))
    reader = LineReader(sock, LIMIT)
    assert reader.read_line(future()) is OVERLONG
    assert sock.received <= LIMIT - 1 + chunk        # not the whole line
    assert [reader.read_line(future()) for _ in after] == after


def test_overlong_answer_does_not_wait_for_the_line_end():
    """Over a real socket: the LF has not even been sent yet."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        b.sendall(b"P" * (LIMIT + 10))
        reader = LineReader(a, LIMIT)
        assert reader.read_line(time.monotonic() + 5) is OVERLONG
        b.sendall(b"more of the same line\r\nNOOP\r\n")
        assert reader.read_line(time.monotonic() + 5) == b"NOOP"
    finally:
        a.close()
        b.close()


@settings(deadline=None)
@given(st.integers(1, RECV_SIZE), st.integers(0, 2 * RECV_SIZE))
def test_past_max_drain_without_lf_the_connection_ends(chunk, extra):
    length = LIMIT + RECV_SIZE + MAX_DRAIN + 1 + extra
    data = b"B" * length
    sock = ScriptedSocket(split(data, range(chunk, len(data), chunk)))
    reader = LineReader(sock, LIMIT)
    assert reader.read_line(future()) is OVERLONG
    with pytest.raises(TooLong):
        reader.read_line(future())
    # Read and dropped, never stored.
    assert len(reader.buf) == 0 and sock.received <= length


@settings(deadline=None)
@given(st.integers(LIMIT + 1, MAX_DRAIN), st.integers(1, RECV_SIZE))
def test_a_long_line_within_max_drain_is_only_drained(length, chunk):
    data = b"C" * length + b"\nQUIT\n"
    sock = ScriptedSocket(split(data, range(chunk, len(data), chunk)))
    reader = LineReader(sock, LIMIT)
    assert reader.read_line(future()) is OVERLONG
    assert reader.read_line(future()) == b"QUIT"


def test_too_long_is_a_disconnect():
    assert issubclass(TooLong, Disconnected)


@given(chunked(), st.integers(0, 12))
def test_take_buffered_returns_exactly_what_was_read_but_not_consumed(case, n):
    """After n lines, consumed lines + take_buffered() == what recv gave:
    nothing is lost or duplicated at a hand-over (cleartext login)."""
    data, chunks = case
    assume(OVERLONG not in model_lines(data, LIMIT))
    sock = ScriptedSocket(chunks)
    reader = LineReader(sock, LIMIT)
    taken = 0
    for _ in range(n):
        try:
            reader.read_line(future())
        except Disconnected:
            break
        taken += 1
    consumed_len = sum(len(seg) + 1 for seg in data.split(b"\n")[:taken])
    rest = reader.take_buffered()
    assert data[:consumed_len] + rest == data[:sock.received]
    assert reader.take_buffered() == b"" and len(reader.buf) == 0



@given(st.binary(max_size=LIMIT).map(lambda b: b.replace(b"\n", b"")), chunked())
def test_initial_bytes_come_first(first, case):
    """Bytes handed over with the socket are read before the socket."""
    data, chunks = case
    got, _ = read_all(ScriptedSocket(chunks), initial=first + b"\n")
    assert got == model_lines(first + b"\n" + data, LIMIT)


@given(st.integers(LIMIT, limits.MAX_SASL_LINE))
def test_a_per_call_limit_applies_to_that_line_only(length):
    """SASL continuation lines may be longer than commands (RFC 5034)."""
    body = b"Q" * (length - 2)
    sock = ScriptedSocket([body + b"\r\n" + body + b"\r\n"])
    reader = LineReader(sock, LIMIT)
    assert reader.read_line(future(), max_line=limits.MAX_SASL_LINE) == body
    second = reader.read_line(future())
    assert second is OVERLONG if length > LIMIT else second == body


@settings(deadline=None)
@given(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), st.floats(0, 100))
def test_a_deadline_in_the_past_raises_timeout(partial, ago):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        if partial:
            b.sendall(partial)                      # a line that never ends
        reader = LineReader(a, LIMIT)
        started = time.monotonic()
        with pytest.raises(Timeout):
            reader.read_line(time.monotonic() - ago)
        assert time.monotonic() - started < 1
        assert bytes(reader.buf) == partial             # kept, not dispatched
    finally:
        a.close()
        b.close()


def test_a_deadline_bounds_a_trickling_client():
    """A byte at a time does not extend the deadline."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        reader = LineReader(a, LIMIT)
        deadline = time.monotonic() + 0.5
        b.sendall(b"U")
        with pytest.raises(Timeout):
            reader.read_line(deadline)
        assert time.monotonic() - deadline < 0.3
    finally:
        a.close()
        b.close()


def test_end_of_stream_and_socket_errors_are_disconnects():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.sendall(b"NOOP\r\nPARTIAL")
    b.close()
    reader = LineReader(a, LIMIT)
    assert reader.read_line(future()) == b"NOOP"
    with pytest.raises(Disconnected):
        reader.read_line(future())
    a.close()
    with pytest.raises(Disconnected):
        LineReader(a, LIMIT).read_line(future())        # EBADF


def test_on_idle_runs_once_when_the_client_is_quiet_and_not_when_it_is_prompt(monkeypatch):
    monkeypatch.setattr(limits, "IDLE_AFTER", 0.2)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        calls = []
        reader = LineReader(a, 255)
        reader.on_idle = lambda: calls.append(time.monotonic())
        b.sendall(b"NOOP\r\n")                   # prompt: no idle call
        assert reader.read_line(time.monotonic() + 5) == b"NOOP"
        assert calls == [] and reader.on_idle is not None
        started = time.monotonic()
        threading.Timer(0.6, b.sendall, [b"STAT\r\n"]).start()
        assert reader.read_line(time.monotonic() + 5) == b"STAT"
        assert len(calls) == 1 and 0.2 <= calls[0] - started < 0.6
        assert reader.on_idle is None            # once
        with pytest.raises(Timeout):             # the deadline still rules
            reader.on_idle = calls.clear
            reader.read_line(time.monotonic() + 0.1)
    finally:
        a.close()
        b.close()
