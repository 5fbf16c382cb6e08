"""Threat "overlong commands, PASS + 5000 bytes" (DESIGN.md, Threats):
answered by a bounded reader, in one place; proved by "it answers and
keeps serving".  Overlong, binary and malformed lines each get one clear
error that never echoes the client's input, a line without CRLF is
answered at once and the connection closed past the drain bound, and a
budget of bad commands ends the connection.  Every test against the
shared daemon ends by showing the server still serves."""
import os

import pytest

from tests import replies
from tests.clients import MBOX, connect_raw, still_serves
from tests.daemon import Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


def test_overlong_line_is_drained_and_session_goes_on(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"PASS " + b"a" * 5000 + b"\r\nCAPA\r\n")
    assert f.readline().rstrip() == replies.LINE_TOO_LONG
    assert f.readline().startswith(b"+OK")
    s.close()


@pytest.mark.parametrize("payload,expected", [
    (b"PASS " + b"a" * 5000 + b"\r\nCAPA\r\n", [replies.LINE_TOO_LONG, b"+OK"]),
    (b"USER al\x00ice\r\n", [b"-ERR Invalid characters in command"]),
    (b"USER \xc3\x28\xa0\xa1\r\n", [b"-ERR Invalid characters in command"]),
    (b"CAPA\rSTAT\r\n", [b"-ERR Invalid characters in command"]),
    (b"CAPA garbage\r\n", [b"-ERR Wrong number of arguments"]),
    (b"\r\n", [replies.UNKNOWN]),
    (b"GET / HTTP/1.1\r\n", [replies.UNKNOWN]),
])
def test_abusive_lines_get_one_clear_error(popd, payload, expected):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(payload)
    for want in expected:
        assert f.readline().startswith(want)
    s.close()
    still_serves(popd)


def test_errors_never_echo_client_input(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"XYZZY-MARKER\r\nUSER MARKER-TOO\r\nPASS MARKER-PW\r\nSTAT MARKER\r\n")
    out = b"".join(f.readline() for _ in range(4))
    assert b"MARKER" not in out
    s.close()


def test_line_without_crlf_is_answered_at_once_and_closed_past_the_drain_bound(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"A" * 300)
    assert f.readline().rstrip() == replies.LINE_TOO_LONG        # no wait for CRLF
    s.sendall(b"A" * 100 * 1024)                                  # 100 KB, no CRLF
    assert f.readline().rstrip() == b"-ERR Line too long, closing connection"
    assert f.read() == b""
    still_serves(popd)


def test_bad_command_budget_closes_the_connection():
    with Daemon(limits={"max_bad_commands": 3}) as d:
        s, f = connect_raw(d)
        f.readline()
        s.sendall(b"FOO\r\n" * 10)
        lines = [f.readline().rstrip() for _ in range(4)]
        assert lines == [replies.UNKNOWN] * 3 + [replies.TOO_MANY_BAD]
        assert f.read() == b""
