"""The command parser and the session loop (popd/pop3/protocol.py), by property.

parse() takes any bytes a line reader can give and returns either one of
protocol.py's error texts or (KEYWORD, args) that the command table
allows; the loop answers every line in order, from constants: nothing a
client sent is ever written back.  The sessions run over scripted sockets
with the broker and child channels stubbed (tests/stubs.py).
"""
import base64
import string

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from popd import limits
from popd.pop3 import protocol, sasl
from popd.pop3.protocol import COMMANDS
from tests import stubs

# -- parse -----------------------------------------------------------------

@given(st.binary(max_size=limits.MAX_COMMAND_LINE + 20))
@example(b"")
@example(b" ")
@example(b"USER")
@example(b"user alice")
@example(b"PASS")
@example(b"PASS \xff\xfe with spaces ")
@example(b"USER \xc3\xa9")
@example(b"USER a\x00b")
@example(b"TOP 1 2 3")
@example(b"AUTH PLAIN " + b"A" * 300)
@example(b"\xffUSER a")
def test_parse_never_raises_and_obeys_the_table(line):
    stubs.check_parsed(line, protocol.parse(line))


keywords = st.sampled_from(sorted(COMMANDS)).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(st.booleans(), min_size=len(k), max_size=len(k))))
tokens = st.text(string.ascii_letters + string.digits + "!#$%&*+-./=?@^_~", min_size=1,
                 max_size=50)


def test_user_takes_a_login_as_long_as_the_broker_accepts():
    name = b"firstname.lastname@" + b"x" * (limits.MAX_LOGIN - 19)
    assert protocol.parse(b"USER " + name) == ("USER", [name.decode()])
    assert protocol.parse(b"USER " + name + b"y") == protocol.ERR_ARG_LONG
    assert protocol.parse(b"RETR " + b"1" * 41) == protocol.ERR_ARG_LONG


@given(keywords, st.lists(tokens, max_size=4), st.integers(1, 3))
def test_well_formed_commands_parse_to_their_keyword(kw, args, spaces):
    keyword, upper = kw
    spelled = "".join(c.lower() if u else c for c, u in zip(keyword, upper))
    line = (spelled + "".join(" " * spaces + a for a in args)).encode()
    parsed = protocol.parse(line)
    stubs.check_parsed(line, parsed)
    syntax = COMMANDS[keyword]
    if syntax.rest_is_argument:
        rest = line.partition(b" ")[2]
        assert parsed == ((keyword, [rest]) if rest else protocol.ERR_ARGS)
    elif any(len(a) > syntax.max_argument for a in args):
        assert parsed == protocol.ERR_ARG_LONG
    elif not syntax.min_args <= len(args) <= syntax.max_args:
        assert parsed == protocol.ERR_ARGS
    else:
        assert parsed == (keyword, args)


@given(st.binary(max_size=100), st.sampled_from([0, 9, 10, 13, 0x1B, 0x7F]),
       st.binary(max_size=100))
def test_control_bytes_are_refused_everywhere(before, control, after):
    assert protocol.parse(before + bytes([control]) + after) == protocol.ERR_BAD_BYTES


printable_bytes = st.binary(max_size=200).map(
    lambda b: bytes(c if 0x20 <= c < 0x7F or c >= 0x80 else 0x41 for c in b))


@given(printable_bytes.map(lambda b: b"x" + b))
def test_a_password_is_the_rest_of_the_line_as_bytes(secret):
    assert protocol.parse(b"PASS " + secret) == ("PASS", [secret])
    assert protocol.parse(b"pass " + secret) == ("PASS", [secret])


@given(printable_bytes, st.integers(0x80, 0xFF), printable_bytes,
       st.sampled_from(["USER", "AUTH PLAIN", "LIST", "TOP 1"]))
def test_eight_bit_bytes_only_in_a_password(before, high, after, command):
    line = command.encode() + b" " + before + bytes([high]) + after
    assert protocol.parse(line) == protocol.ERR_BAD_BYTES


# -- the session loop --------------------------------------------------------
# Client lines built around a marker: a string that appears in no reply
# constant and no stored message, so finding it in the output would mean
# the server echoed client bytes.

ALL_KNOWN = " ".join(stubs.FRONT_TEXTS) + stubs.MBOX.decode() + " ".join(COMMANDS)
markers = st.text(string.ascii_uppercase, min_size=10, max_size=10).filter(
    lambda m: m not in ALL_KNOWN.upper())


@st.composite
def junk_lines(draw, marker, keywords_from):
    keyword = draw(st.one_of(st.sampled_from(keywords_from), st.just(marker),
                             st.text(string.ascii_letters, max_size=6)))
    keyword = "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in keyword)
    args = draw(st.lists(st.one_of(
        st.just(marker),
        st.builds(lambda a, b: a + marker + b, st.text(string.printable.strip(), max_size=8),
                  st.text(string.ascii_letters, max_size=8)),
        st.integers(-3, 12).map(str),
        st.just(sasl.encode_plain(marker, marker).decode()),
        st.just("PLAIN"),
        st.text(string.ascii_letters, min_size=300, max_size=400).map(lambda t: marker + t),
    ), max_size=3))
    line = " ".join([keyword] + args).encode()
    if draw(st.integers(0, 9)) == 0:
        line += bytes([draw(st.sampled_from([0, 13, 0xFF]))]) + marker.encode()
    return line


def client_lines(marker, keywords_from):
    """Well-formed commands carrying the marker, and junk around them."""
    m = marker.encode()
    plain = sasl.encode_plain(marker, marker)
    good = st.sampled_from([
        b"USER " + m, b"PASS " + m, b"PASS " + m + b" with spaces", b"AUTH PLAIN " + plain,
        b"AUTH PLAIN", plain, b"AUTH PLAIN " + base64.b64encode(m), b"*", b"CAPA", b"STLS",
        b"QUIT", b"AUTH", b"STAT", b"LIST", b"LIST 1", b"LIST " + m, b"UIDL 2", b"RETR 1",
        b"TOP 1 0", b"TOP 2 " + m, b"DELE 1", b"RSET", b"NOOP", b"RETR 12345678901",
    ])
    line = st.one_of(good, good, junk_lines(marker, keywords_from))
    return st.tuples(line, st.sampled_from([b"\r\n", b"\n"])).map(lambda t: t[0] + t[1])


@st.composite
def front_scripts(draw):
    marker = draw(markers)
    lines = draw(st.lists(client_lines(marker, sorted(COMMANDS)), max_size=25))
    data = b"".join(lines)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=10))
    return marker, lines, stubs.split(data, cuts)


ANSWERS = st.lists(st.just(stubs.AUTH_FAIL), max_size=3).flatmap(
    lambda fails: st.sampled_from([stubs.AUTH_OK, stubs.AUTH_FAIL_FINAL]).map(
        lambda last: fails + [last]))


@settings(deadline=None, max_examples=300)
@given(front_scripts(), st.sampled_from(["none", "starttls", "implicit"]),
       st.sampled_from(["always", "always", "tls-only"]), ANSWERS,
       st.sampled_from([stubs.MAILBOX_READY, stubs.MAILBOX_ERR]), st.integers(1, 30),
       st.sampled_from([None, 1, 7]))
def test_front_replies_are_constants_and_never_echo(script, tls_mode, plaintext, answers,
                                                     child_answer, budget, send_limit):
    marker, lines, chunks = script
    run = stubs.FrontRun(chunks, tls_mode, plaintext, answers, child_answer, budget,
                         send_limit)
    try:
        outcome = run.run()
        event(outcome)
        output = bytes(run.client.sent)
        stubs.check_front_output(output)
        assert marker.encode() not in output
        for token in (sasl.encode_plain(marker, marker),):
            assert token not in output
        assert outcome in {"disconnected", "quit", "login", "auth attempts exhausted",
                           "too many bad commands", "mailbox error", "line too long",
                           "timeout"}
        # Every request the broker got decodes and is within its bounds.
        for request in run.requests():
            assert len(request.authcid.encode()) <= limits.MAX_LOGIN
            assert 0 < len(request.secret) <= limits.MAX_SECRET
            assert request.method in ("PASS", "PLAIN")
        assert run.session.logged_in == (outcome == "login")
    finally:
        run.close()


@settings(deadline=None)
@given(st.lists(st.sampled_from([b"CAPA", b"capa", b"NOOP", b"STAT", b"XYZZY", b"RETR 1",
                                 b"USER", b"AUTH", b"\x00"]), max_size=40))
def test_pipelined_commands_are_answered_one_each_in_order(commands):
    """However many commands arrive in one read, each gets one status line,
    in order; no command ends the session here (budget large enough)."""
    data = b"".join(c + b"\r\n" for c in commands)
    run = stubs.FrontRun([data], max_bad_commands=1000)
    try:
        assert run.run() == "disconnected"
        lines = bytes(run.client.sent).split(b"\r\n")
        statuses = [l for l in lines if l.startswith((b"+OK", b"-ERR"))]
        assert len(statuses) == 1 + len(commands)               # the greeting first
        for command, status in zip(commands, statuses[1:]):
            ok = command.upper() in (b"CAPA", b"AUTH")
            assert status.startswith(b"+OK" if ok else b"-ERR"), (command, status)
    finally:
        run.close()


@given(st.integers(1, 30), st.integers(0, 40))
def test_the_bad_command_budget_closes_the_connection(budget, bad):
    data = b"XYZZY\r\n" * bad + b"CAPA\r\n"
    run = stubs.FrontRun([data], max_bad_commands=budget)
    try:
        outcome = run.run()
        output = bytes(run.client.sent)
        if bad > budget:
            assert outcome == "too many bad commands"
            assert output.count(b"-ERR Unknown command") == budget
            assert output.endswith(b"-ERR " + protocol.ERR_TOO_MANY_BAD.encode() + b"\r\n")
        else:
            assert outcome == "disconnected"
            assert output.endswith(b".\r\n")                  # CAPA still answered
    finally:
        run.close()


def test_user_pass_and_sasl_become_the_same_broker_request():
    plain = sasl.encode_plain("alice", b"s3cret pass")
    script = (b"USER alice\r\nPASS s3cret pass\r\nAUTH PLAIN " + plain + b"\r\n"
              + b"AUTH PLAIN\r\n" + plain + b"\r\n")
    run = stubs.FrontRun([script], broker_answers=[stubs.AUTH_FAIL] * 2 + [stubs.AUTH_OK])
    try:
        assert run.run() == "login"
        requests = run.requests()
        assert [(r.authzid, r.authcid, r.secret) for r in requests] == \
            [("", "alice", b"s3cret pass")] * 3
        assert [r.method for r in requests] == ["PASS", "PLAIN", "PLAIN"]
        assert run.client.sent.endswith(b"+OK Logged in\r\n")
    finally:
        run.close()


def test_login_done_follows_the_written_ok_and_only_a_success():
    """The broker records a success only on LOGIN_DONE, which the front
    sends once +OK has been written to the client."""
    run = stubs.FrontRun([b"USER alice\r\nPASS x\r\n"], broker_answers=[stubs.AUTH_OK])
    try:
        assert run.run() == "login"
        assert [m.name for m in run.frames()] == ["AUTH_REQUEST", "LOGIN_DONE"]
        assert run.client.sent.endswith(b"+OK Logged in\r\n")
    finally:
        run.close()
    run = stubs.FrontRun([b"USER alice\r\nPASS x\r\n"],
                         child_answer=stubs.MAILBOX_ERR, broker_answers=[stubs.AUTH_OK])
    try:
        run.run()
        assert [m.name for m in run.frames()] == ["AUTH_REQUEST"]
        assert b"[IN-USE]" in run.client.sent
    finally:
        run.close()


def test_a_login_hands_over_exactly_the_pipelined_rest():
    run = stubs.FrontRun([b"USER alice\r\nPASS x\r\nSTAT\r\nLIST\r\n"],
                         broker_answers=[stubs.AUTH_OK])
    try:
        assert run.run() == "login"
        assert run.session.reader.take_buffered() == b"STAT\r\nLIST\r\n"
    finally:
        run.close()


def test_stls_drops_what_was_sent_before_the_handshake():
    run = stubs.FrontRun([b"STLS\r\nUSER mallory\r\nPASS x\r\n", b"CAPA\r\n"],
                         tls_mode="starttls", plaintext="tls-only")
    try:
        assert run.run() == "disconnected"
        assert run.requests() == []                     # injected PASS never ran
        out = bytes(run.client.sent)
        assert b"+OK Begin TLS negotiation\r\n+OK Capability list follows" in out
        assert b"STLS\r\n" not in out.split(b"Begin TLS negotiation")[1]
    finally:
        run.close()


# -- the child's loop ----------------------------------------------------------

@st.composite
def child_scripts(draw):
    marker = draw(markers)
    lines = draw(st.lists(client_lines(marker, sorted(COMMANDS) + ["RETR 1", "TOP 2 1"]),
                          max_size=25))
    data = b"".join(lines)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=10))
    leftover_len = draw(st.integers(0, min(len(data), 200)))
    return marker, data[:leftover_len], stubs.split(data[leftover_len:], cuts)


@settings(deadline=None, max_examples=300)
@given(child_scripts(), st.integers(1, 30), st.sampled_from([None, 3]))
def test_child_replies_never_echo(script, budget, send_limit):
    marker, leftover, chunks = script
    drop = stubs.StubMaildrop()
    try:
        session, outcome, output = stubs.serve_child(chunks, leftover, drop, send_limit, budget)
    finally:
        drop.close()
    event(outcome)
    assert marker.encode() not in output
    assert outcome in {"disconnected", "quit", "too many bad commands", "line too long"}
    # Status lines fit RFC 2449's bound; message bodies are the mbox's.
    for line in output.split(b"\r\n"):
        if line.startswith((b"+OK", b"-ERR")):
            assert len(line) + 2 <= limits.MAX_RESPONSE_LINE
    if outcome != "quit":
        assert drop.updated is None                      # nothing deleted without QUIT


def test_child_serves_pipelined_leftover_first():
    session, outcome, output = stubs.serve_child([b"DELE 1\r\nQUIT\r\n"], b"STAT\r\nLIST\r\n")
    assert outcome == "quit"
    status = [l for l in output.split(b"\r\n") if l.startswith((b"+OK", b"-ERR"))]
    assert status[0].startswith(b"+OK 2 ") and status[1] == b"+OK 2 messages"
    assert status[-1] == b"+OK Bye, 1 message(s) deleted"



def test_the_parser_bounds_what_user_and_pass_may_carry():
    # authorization.py relies on these instead of checking again.
    assert protocol.COMMANDS["USER"].max_argument <= limits.MAX_LOGIN
    assert limits.MAX_COMMAND_LINE <= limits.MAX_SECRET
