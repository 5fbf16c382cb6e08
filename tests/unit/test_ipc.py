"""The IPC vocabulary: strict decoding, truncation, fds where none belong."""
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popd import ipc, limits
from popd.broker.broker import ChannelState
from popd.ipc import Channel, Role
from popd.pop3.authorization import FrontState
from popd.slot.child import ChildState, _stream_socket
from popd.exporter.server import ExporterState
from popd.supervisor.broker_link import LinkState
from popd.supervisor.exporter_link import ExporterLinkState
from popd.supervisor.pool import SlotState


def test_round_trip_with_fd():
    a, b = ipc.socketpair()
    r, w = os.pipe()
    ipc.send(a, "CONNECTION", fds=[r], peer_ip="192.0.2.1", peer_port=110,
             listener="127.0.0.1:110", tls="none", session="0123abcd")
    msg = ipc.recv(b, Channel.SUPERVISOR_CHILD, Role.CHILD, ChildState.IDLE)
    assert msg.name == "CONNECTION" and msg.peer_ip == "192.0.2.1" and msg.peer_port == 110
    assert len(msg.fds) == 1
    os.write(w, b"x")
    assert os.read(msg.fds[0], 1) == b"x"
    for fd in (r, w, *msg.fds):
        os.close(fd)


def test_wrong_direction_and_channel_are_violations():
    a, b = ipc.socketpair()
    ipc.send(a, "AUTH_OK")
    with pytest.raises(ipc.Violation):
        ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER)     # AUTH_OK is sent by the broker
    ipc.send(a, "AUTH_OK")
    with pytest.raises(ipc.Violation):
        ipc.recv(b, Channel.CHILD_FRONT, Role.FRONT)       # not a child-front message


def test_oversized_datagram_is_refused_not_truncated():
    a, b = ipc.socketpair()
    frame = ipc.encode("AUTH_OK")
    a.send(frame + b"\0" * limits.MAX_FRAME)
    with pytest.raises(ipc.Violation, match="truncated"):
        ipc.recv(b, Channel.BROKER_FRONT, Role.FRONT, FrontState.AUTHENTICATING)


def test_fds_pushed_on_a_channel_without_fds_are_closed():
    a, b = ipc.socketpair()
    r, w = os.pipe()
    frame = ipc.encode("AUTH_REQUEST", authzid="", authcid="u", secret=b"p", method="PASS")
    a.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ipc.Violation):
        ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER, ChannelState.BOUND)
    # No ancillary space was offered: the fd never arrived.
    assert set(os.listdir("/proc/self/fd")) <= before
    os.close(r), os.close(w)


def test_empty_datagram_reads_as_closed():
    a, b = ipc.socketpair()
    a.send(b"")
    with pytest.raises(ipc.Closed):
        ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_frames_decode_or_raise_violation(data):
    for channel in Channel:
        for role in Role:
            try:
                msg = ipc.decode(data, channel, role)
            except ipc.Violation:
                continue
            # Whatever decodes re-encodes to exactly the same bytes.
            assert ipc.encode(msg.name, **msg.fields) == data


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=64), st.text(max_size=64), st.binary(max_size=1024))
def test_auth_request_round_trip(authzid, authcid, secret):
    if len(authzid.encode()) > 64 or len(authcid.encode()) > 64:
        with pytest.raises(ValueError):
            ipc.encode("AUTH_REQUEST", authzid=authzid, authcid=authcid, secret=secret,
                       method="PASS")
        return
    data = ipc.encode("AUTH_REQUEST", authzid=authzid, authcid=authcid, secret=secret,
                      method="PASS")
    if "\0" in authzid + authcid:
        # The sender may write a NUL in a name; the broker refuses it.
        with pytest.raises(ipc.Violation):
            ipc.decode(data, Channel.BROKER_FRONT, Role.BROKER)
        return
    msg = ipc.decode(data, Channel.BROKER_FRONT, Role.BROKER)
    assert (msg.authzid, msg.authcid, msg.secret) == (authzid, authcid, secret)


def test_the_broker_answers_every_message_its_peers_may_send():
    from popd.broker.broker import Broker
    sent = {(spec.channel, spec.sender): set() for spec in ipc.MESSAGES}
    for spec in ipc.MESSAGES:
        sent[spec.channel, spec.sender].add(spec.name)
    assert set(Broker.SUPERVISOR_REQUESTS) == sent[Channel.SUPERVISOR_BROKER, Role.SUPERVISOR]
    assert set(Broker.FRONT_REQUESTS) == sent[Channel.BROKER_FRONT, Role.FRONT]


def test_a_once_message_is_refused_the_second_time_on_that_channel_end():
    a, b = ipc.socketpair()
    other_a, other_b = ipc.socketpair()
    try:
        ipc.send(a, "SLOT_READY", front_pid=7)
        ipc.send(a, "SLOT_READY", front_pid=8)
        assert ipc.recv(b, Channel.SUPERVISOR_CHILD, Role.SUPERVISOR,
                        SlotState.STARTING).front_pid == 7
        with pytest.raises(ipc.Violation, match="a second SLOT_READY"):
            ipc.recv(b, Channel.SUPERVISOR_CHILD, Role.SUPERVISOR, SlotState.STARTING)
        # Another channel end keeps its own count; repeatable messages repeat.
        ipc.send(other_a, "SLOT_READY", front_pid=9)
        assert ipc.recv(other_b, Channel.SUPERVISOR_CHILD, Role.SUPERVISOR,
                        SlotState.STARTING).front_pid == 9
        for _ in range(3):
            ipc.send(a, "CHANNEL_BIND", slot=1, peer_ip="192.0.2.1", session="0123abcd")
            assert ipc.recv(b, Channel.SUPERVISOR_BROKER, Role.BROKER).slot == 1
    finally:
        for s in (a, b, other_a, other_b):
            s.close()


# The state enum of each receiver on each channel; None: it keeps none.
RECEIVER_STATES = {
    (Channel.SUPERVISOR_CHILD, Role.CHILD): ChildState,
    (Channel.SUPERVISOR_CHILD, Role.SUPERVISOR): SlotState,
    (Channel.SUPERVISOR_BROKER, Role.SUPERVISOR): LinkState,
    (Channel.SUPERVISOR_BROKER, Role.BROKER): None,
    (Channel.SUPERVISOR_SPAWNER, Role.SUPERVISOR): None,
    (Channel.SUPERVISOR_SPAWNER, Role.SPAWNER): None,
    (Channel.BROKER_FRONT, Role.BROKER): ChannelState,
    (Channel.BROKER_FRONT, Role.FRONT): FrontState,
    (Channel.BROKER_CHILD, Role.CHILD): ChildState,
    (Channel.BROKER_WORKER, Role.BROKER): None,
    (Channel.BROKER_WORKER, Role.WORKER): None,
    (Channel.CHILD_FRONT, Role.CHILD): ChildState,
    (Channel.CHILD_FRONT, Role.FRONT): FrontState,
    (Channel.SUPERVISOR_EXPORTER, Role.SUPERVISOR): ExporterLinkState,
    (Channel.SUPERVISOR_EXPORTER, Role.EXPORTER): ExporterState,
}


def _receiver(spec):
    first, second = (Role(r) for r in spec.channel.value.split("-"))
    return second if spec.sender is first else first


def test_every_message_names_states_its_receiver_has():
    for spec in ipc.MESSAGES:
        states = RECEIVER_STATES[spec.channel, _receiver(spec)]
        if states is None:
            assert spec.states is ipc.ANY, spec.name
        else:
            assert spec.states, spec.name
            assert set(spec.states) <= {s.value for s in states}, spec.name


def test_a_message_outside_its_states_is_refused_and_its_fds_closed():
    a, b = ipc.socketpair()
    r, w = os.pipe()
    try:
        ipc.send(a, "AUTH_REQUEST", authzid="", authcid="u", secret=b"p", method="PASS")
        with pytest.raises(ipc.Violation, match="AUTH_REQUEST in state waiting"):
            ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER, ChannelState.WAITING)
        ipc.send(a, "LOGIN_DONE")
        with pytest.raises(ipc.Violation, match="LOGIN_DONE in state bound"):
            ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER, ChannelState.BOUND)
        # A busy child takes no second client: the socket it carried is closed.
        ipc.send(a, "CONNECTION", fds=[r], peer_ip="192.0.2.1", peer_port=110,
                 listener="127.0.0.1:110", tls="none", session="0123abcd")
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ipc.Violation, match="CONNECTION in state busy"):
            ipc.recv(b, Channel.SUPERVISOR_CHILD, Role.CHILD, ChildState.BUSY)
        assert set(os.listdir("/proc/self/fd")) <= before
        # The same frames pass in the state they are declared for.
        ipc.send(a, "LOGIN_DONE")
        assert ipc.recv(b, Channel.BROKER_FRONT, Role.BROKER, ChannelState.GRANTED)
    finally:
        os.close(r), os.close(w)
        a.close(), b.close()


def test_auth_request_method_is_pass_or_plain():
    """The broker logs the method: a front that someone took over must not
    be able to put another word, or a forged log line, there."""
    good = ipc.encode("AUTH_REQUEST", authzid="", authcid="u", secret=b"p", method="PLAIN")
    assert ipc.decode(good, Channel.BROKER_FRONT, Role.BROKER).method == "PLAIN"
    field = ipc._FIELD_LEN.pack(5) + b"PLAIN"
    assert good.endswith(field)
    for other in (b"PL\nIN", b"LOGIN"):
        forged = good[:-len(field)] + ipc._FIELD_LEN.pack(5) + other
        with pytest.raises(ipc.Violation):
            ipc.decode(forged, Channel.BROKER_FRONT, Role.BROKER)
    with pytest.raises(ValueError):
        ipc.encode("AUTH_REQUEST", authzid="", authcid="u", secret=b"p", method="LOGIN")


def test_the_child_takes_only_a_stream_socket_from_the_front():
    """HANDOVER's fd comes from the less trusted side: a pipe or a datagram
    socket is refused (and closed), not taken as the client."""
    r, w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for fd in (r, udp.detach()):
        assert _stream_socket(fd) is None
        with pytest.raises(OSError):
            os.fstat(fd)                        # closed
    os.close(w)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client = _stream_socket(b.detach())
    client.sendall(b"x")
    assert a.recv(1) == b"x"
    client.close()
    a.close()
