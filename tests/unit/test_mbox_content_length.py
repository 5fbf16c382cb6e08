"""Mbox files Dovecot wrote: body lines starting with "From " are not
quoted, Content-Length tells where the message ends.  popd joins the
pieces back only with that proof, and never absorbs a message whose From
line is real (popd/mail/mbox.py, "Content-Length")."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd.mail import mbox, mbox_update

FROM = b"From sender@example.org  Thu Dec 03 16:26:35 2026\n"


def dovecot_message(body, extra=b"", nl=b"\n", length=None):
    head = (b"From: a@example.org" + nl + b"Subject: s" + nl + extra
            + b"Content-Length: %d" % (len(body) if length is None else length) + nl)
    return FROM.replace(b"\n", nl) + head + nl + body + nl


def scan(tmp_path, data):
    path = tmp_path / "mbox"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    return fd, mbox.scan(fd)


def contents(fd, index):
    return [b"".join(mbox.iter_message(fd, index, n)) for n in range(len(index))]


def test_body_from_lines_stay_in_their_message(tmp_path):
    body = b"line\nFrom the old days\nFrom me, again\n"
    data = dovecot_message(b"one\n") + dovecot_message(body) + dovecot_message(b"three\n")
    fd, index = scan(tmp_path, data)
    assert len(index) == 3
    got = contents(fd, index)
    assert got[1].endswith(b"\r\n\r\nline\r\nFrom the old days\r\nFrom me, again\r\n")
    assert [index.octets(n) for n in range(3)] == [len(c) for c in got]
    assert got[2].endswith(b"three\r\n")


def test_the_last_message_and_crlf_files(tmp_path):
    body = b"a\r\nFrom here on\r\nb\r\n"
    data = dovecot_message(b"x\r\n", nl=b"\r\n") + dovecot_message(body, nl=b"\r\n")
    fd, index = scan(tmp_path, data)
    assert len(index) == 2
    assert contents(fd, index)[1].endswith(b"\r\n\r\na\r\nFrom here on\r\nb\r\n")
    assert index.octets(1) == len(contents(fd, index)[1])


def test_no_proof_no_join(tmp_path):
    body = b"line\nFrom the old days\n"
    for length in (len(body) - 1, len(body) + 5, 10**14):
        fd, index = scan(tmp_path, dovecot_message(b"x\n") + dovecot_message(body, length=length))
        assert len(index) == 3, length
    no_header = FROM + b"Subject: s\n\nline\nFrom the old days\n\n"
    fd, index = scan(tmp_path, no_header)
    assert len(index) == 2


def test_a_forged_content_length_never_swallows_a_real_message(tmp_path):
    # A sender's Content-Length spanning the next (real) message exactly.
    victim = FROM + b"Subject: for you\n\nhello\n\n"
    body = b"spam\n"
    claimed = len(body) + 1 + len(victim) - 1
    data = dovecot_message(b"x\n") + dovecot_message(body, length=claimed) + victim
    fd, index = scan(tmp_path, data)
    assert len(index) == 3
    assert contents(fd, index)[2].endswith(b"hello\r\n")


def test_deleting_a_joined_message_removes_all_of_it(tmp_path):
    body = b"line\nFrom the old days\n"
    keep = dovecot_message(b"keep\n")
    data = keep + dovecot_message(body) + keep
    fd, index = scan(tmp_path, data)
    assert mbox_update.verify_unchanged(fd, index)
    mbox_update.apply_deletions(fd, index, {1}, str(tmp_path / "journal"))
    assert (tmp_path / "mbox").read_bytes() == keep + keep


def test_index_cache_extension_joins_new_pieces(tmp_path):
    first = dovecot_message(b"one\n")
    fd, index = scan(tmp_path, first)
    with open(tmp_path / "mbox", "ab") as f:
        f.write(dovecot_message(b"a\nFrom b\n") + dovecot_message(b"c\n"))
    mbox.scan(fd, os.fstat(fd).st_size, extend=index)
    assert index == mbox.scan(fd) and len(index) == 3


bodies = st.lists(st.sampled_from([b"text", b"From x", b"From the", b"", b">From y",
                                   b"From a@b Thu Dec  3 16:00:00 2026"]),
                  max_size=6).map(lambda lines: b"".join(x + b"\n" for x in lines))


@settings(max_examples=200, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=5))
def test_dovecot_files_scan_to_their_messages(tmp_path_factory, messages):
    # A body line that is itself a real From line splits its message at
    # every From line (the Content-Length would span a real message):
    # Dovecot's reader would join them, popd never joins across a real
    # From line.
    tmp = tmp_path_factory.mktemp("m")
    fd, index = scan(tmp, b"".join(dovecot_message(b) for b in messages))

    def pieces(body):
        lines = body.split(b"\n")
        if not any(x.startswith(b"From a@b Thu") for x in lines):
            return 1
        return 1 + sum(x.startswith(b"From ") for x in lines)
    real = sum(pieces(b) for b in messages)
    assert len(index) == real
    if real == len(messages):
        got = contents(fd, index)
        for body, sent in zip(messages, got):
            assert sent.endswith(b"\r\n\r\n" + body.replace(b"\n", b"\r\n").replace(
                b"\r\n.", b"\r\n..")) or (not body and sent.endswith(b"\r\n\r\n"))
