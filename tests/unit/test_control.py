"""The control socket's request vocabulary: strict, and nothing else."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popd.supervisor import control
from popd.supervisor.control import RequestError, parse_request


@pytest.mark.parametrize("line, parsed", [
    (b"status", ("status",)), (b"who", ("who",)), (b"stats", ("stats",)),
    (b"metrics", ("metrics",)), (b"kick user alice", ("kick", "user", "alice")),
    (b"kick address 2001:DB8::1", ("kick", "address", "2001:db8::1")),
    (b"kick address 192.0.2.7", ("kick", "address", "192.0.2.7")),
    (b"kick pid 4242", ("kick", "pid", 4242)),
])
def test_requests_popd_answers(line, parsed):
    assert parse_request(line) == parsed


@pytest.mark.parametrize("line", [
    b"", b"status ", b" status", b"STATUS", b"who --json", b"kick", b"kick user",
    b"kick user alice bob", b"kick pid 1", b"kick pid 0", b"kick pid -3", b"kick pid 12345678901",
    b"kick address 300.1.1.1", b"kick address fe80::1%eth0x", b"kick host alice",
    b"kick user " + b"a" * 65, b"who\x00", b"kick user \xc3\xa9", b"stats\t",
])
def test_anything_else_is_refused(line):
    with pytest.raises(RequestError):
        parse_request(line)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_parse_into_the_vocabulary_or_are_refused(line):
    try:
        parsed = parse_request(line)
    except RequestError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert parsed[0] in control.COMMANDS + ("kick",)
    if parsed[0] == "kick":
        assert parsed[1] in control.KICK_KINDS and len(parsed) == 3
    else:
        assert len(parsed) == 1
