"""Deterministic mailboxes for bench/compare.py and the reference
transform every received byte is checked against.

Runs in: the benchmark process (as root, before any server starts).

The transform is written from RFC 1939 and the mbox convention alone and
shares no code with popd: messages are separated by a "From " line that
follows a blank line; that From line and the blank separator line before
the next one are not part of the message; bare LF becomes CRLF (CRLF stays);
lines starting with "." get one more "."; a multi-line reply ends with
".\\r\\n".  ">From " quoting is left alone (neither popd nor Dovecot
unquotes it).  The generators only write what every mbox reader agrees on
(a blank line before each From line, body lines that start with "From "
quoted as ">From ", no Status/X-UID/Content-Length headers that Dovecot
would interpret).
"""
import random

SEPARATOR = b"\nFrom "


def spans(data):
    """(start, end) of each message's text (From line and separator
    excluded) in an mbox held in memory."""
    if not data.startswith(b"From "):
        raise ValueError("not an mbox: no From line at the start")
    starts = []
    pos = 0
    while pos != -1:
        starts.append(pos)
        pos = data.find(SEPARATOR, pos + 1)
        if pos != -1:
            pos += 1
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(data)
        nl = data.find(b"\n", start, end)
        content = nl + 1 if nl != -1 else end
        # Before a From line, the separator is the blank line that `end`
        # already excludes; at the end of the file it is the last "\n".
        if end == len(data) and data.endswith(b"\n\n"):
            end -= 1
        yield content, end


def size_of(data, start, end):
    """to_wire()'s size without copying the message: LF→CRLF adds one per
    bare LF, and a missing final line end adds CRLF."""
    size = end - start + data.count(b"\n", start, end) - data.count(b"\r\n", start, end)
    if end == start or data[end - 1] != 0x0A:
        size += 2
    return size


def to_wire(content):
    """(size as LIST/STAT count it, bytes of the RETR reply after +OK)."""
    text = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    size = len(text)
    stuffed = text.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return size, stuffed + b".\r\n"


class Reference:
    """What a correct server sends for one mbox."""

    def __init__(self, data, keep_wire=True):
        self.sizes = []
        self.wire = [] if keep_wire else None
        for start, end in spans(data):
            if keep_wire:
                size, wire = to_wire(data[start:end])
                self.wire.append(wire)
            else:
                size = size_of(data, start, end)
            self.sizes.append(size)

    @property
    def count(self):
        return len(self.sizes)

    @property
    def octets(self):
        return sum(self.sizes)

    @property
    def wire_bytes(self):
        return sum(len(w) for w in self.wire)


# -- generators -----------------------------------------------------------------

_WORDS = (b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
          b"tempor incididunt ut labore et dolore magna aliqua From the mail server "
          b"quoted text r\xc3\xa9sum\xc3\xa9 na\xefve \xe9t\xe9 caf\xe9").split()


def _line_pool(rng, count=4096):
    """Body lines: words (some 8-bit), dot lines, ">From " lines, blank lines,
    a few 20 KB lines; never a line that starts with "From "."""
    pool = []
    for _ in range(count):
        r = rng.random()
        if r < 0.02:
            line = rng.choice([b".", b"..", b".dot line", b"...three"])
        elif r < 0.03:
            line = b">From someone at the office"
        elif r < 0.06:
            line = b""
        elif r < 0.0625:
            line = bytes(rng.choice(b"abcdefghij \xe9") for _ in range(20000))
        else:
            line = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        if line.startswith(b"From "):
            line = b">" + line
        pool.append(line)
    return pool


def _trim(lines):
    """No blank last line: readers disagree on whether a blank line before
    the separator belongs to the message; this is a benchmark, not a
    conformance test."""
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        lines.append(b"end")


def _headers(n):
    return (b"Return-Path: <sender%d@example.org>\n"
            b"Message-ID: <%d.compare@example.org>\n"
            b"From: Sender %d <sender%d@example.org>\n"
            b"To: user@example.org\n"
            b"Subject: benchmark message %d\n"
            b"MIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: 8bit\n\n"
            % (n % 97, n, n % 97, n % 97, n))


def _from_line(n):
    return (b"From sender%d@example.org Mon Jan  1 00:%02d:%02d 2024\n"
            % (n % 97, n // 60 % 60, n % 60))


def mixed_mbox(path, size, seed=2026):
    """About `size` bytes of messages from 2 KB to 5 MB (most small, about 5
    per MB), one in 32 with CRLF line ends.  Returns the message count."""
    rng = random.Random(seed)
    pool = _line_pool(rng)
    n = written = 0
    with open(path, "wb", buffering=4 << 20) as f:
        while written < size:
            target = int(2048 * (2560 ** (rng.random() ** 4)))
            body, length = [], 0
            while length < target:
                chunk = rng.choices(pool, k=64)
                body.extend(chunk)
                length += sum(len(x) + 1 for x in chunk)
            _trim(body)
            eol = b"\r\n" if n % 32 == 5 else b"\n"
            msg = (_from_line(n) + _headers(n).replace(b"\n", eol)
                   + eol.join(body) + eol + b"\n")
            f.write(msg)
            written += len(msg)
            n += 1
    return n


def many_mbox(path, count, seed=1939):
    """`count` messages of 1.7-19 KB (about 10 KB on average: 100,000 of
    them make about 1 GB), built from 256 bodies with unique headers."""
    rng = random.Random(seed)
    pool = [line for line in _line_pool(rng) if len(line) < 200]
    bodies = []
    for t in range(256):
        target = rng.randint(1500, 18500)
        lines, length = [], 0
        while length < target:
            line = rng.choice(pool)
            lines.append(line)
            length += len(line) + 1
        _trim(lines)
        eol = b"\r\n" if t % 32 == 0 else b"\n"
        bodies.append(eol.join(lines) + eol)
    with open(path, "wb", buffering=4 << 20) as f:
        for n in range(count):
            f.write(_from_line(n) + _headers(n) + bodies[rng.randrange(256)] + b"\n")
    return count


def small_mbox(count=10):
    """A small mailbox for login and memory scenarios: `count` messages."""
    rng = random.Random(7)
    pool = [line for line in _line_pool(rng) if len(line) < 200]
    out = []
    for n in range(count):
        lines = rng.choices(pool, k=20 + 10 * n)
        _trim(lines)
        body = b"\n".join(lines) + b"\n"
        out.append(_from_line(n) + _headers(n) + body + b"\n")
    return b"".join(out)
