"""popd ctl and the control socket, against the real daemon as root:
who lists live sessions, kick ends one as a dropped connection would,
callers who are neither root nor in control_group are refused (by the
socket's mode and again by SO_PEERCRED), the counters move exactly as a
scripted run predicts, and the metrics parse as OpenMetrics."""
import json
import os
import poplib
import socket
import subprocess
import sys
import time

import pytest

from popd.ctl import ask
from tests.clients import MBOX, SourcePOP3, msg
from tests.daemon import REPO, USERS, Daemon, output_of_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


def ctl(d, *command):
    return subprocess.run([sys.executable, "-m", "popd.cli", "ctl", "-s",
                           str(d.base / "popd.ctl"), *command],
                          capture_output=True, text=True, timeout=30, cwd=REPO)


def ask_as(d, request, uid, gid, groups=()):
    """One request on the control socket from a process with these
    credentials, forked here (they need not be able to read the popd
    package, which a checkout in a 0700 directory denies them) and asking
    as `popd ctl` does: the answer, or "refused at connect" when the
    socket's mode denies them."""
    def asking():
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
        try:
            return ask(str(d.base / "popd.ctl"), request.decode())
        except PermissionError:
            return b"refused at connect"

    return output_of_child(asking).decode()


def ctl_json(d, *command):
    run = ctl(d, "--json", *command)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_who_lists_sessions_and_kick_ends_one_leaving_its_maildrop_untouched():
    with Daemon(tls=True) as d:
        alice_box = d.write_mbox("alice", MBOX)
        d.write_mbox("bob", msg(1) + msg(2))
        before = alice_box.read_bytes()
        alice = poplib.POP3(d.host, d.port, timeout=10)
        alice.stls(context=d.client_context())
        alice.user("alice")
        alice.pass_(USERS["alice"][0])
        alice.dele(1)                       # marked, never applied: the kick drops it
        bob = poplib.POP3_SSL(d.host, d.tls_port, context=d.client_context(), timeout=10)
        bob.user("bob")
        bob.pass_(USERS["bob"][0])
        sessions = wait_for(lambda: [s for s in ctl_json(d, "who") if s["state"] == "session"]
                            if len(ctl_json(d, "who")) == 2 else None)
        by_user = {s["user"]: s for s in sessions}
        assert set(by_user) == {"alice", "bob"}
        assert by_user["alice"]["listener"] == "starttls"
        assert by_user["bob"]["listener"] == "implicit"
        for s in sessions:
            assert s["tls"].startswith("TLSv1.3"), s
            assert s["address"] == "127.0.0.1" and s["pid"] > 1 and len(s["session"]) == 8
        table = ctl(d, "who")
        assert table.returncode == 0 and "alice" in table.stdout and "TLSv1.3" in table.stdout

        kicked = ctl_json(d, "kick", "user", "alice")["kicked"]
        assert [k["user"] for k in kicked] == ["alice"]
        d.wait_for_log('user="alice", tls=TLSv1.3')
        d.wait_for_log("reason=kicked")
        with pytest.raises((poplib.error_proto, OSError)):
            alice.stat()
        assert alice_box.read_bytes() == before
        # The other session goes on, and alice may log in again.
        assert bob.stat()[0] == 2
        bob.quit()
        again = poplib.POP3_SSL(d.host, d.tls_port, context=d.client_context(), timeout=10)
        again.user("alice")
        again.pass_(USERS["alice"][0])
        assert again.stat()[0] == 2
        again.quit()
        assert ctl_json(d, "kick", "address", "192.0.2.1") == {"kicked": []}
        line = [l for l in d.log().splitlines() if "reason=kicked" in l]
        assert len(line) == 1 and 'user="alice"' in line[0] and "deleted=0" in line[0]


def test_callers_neither_root_nor_in_control_group_are_refused():
    with Daemon(extra={"control_group": 61002}) as d:
        path = d.base / "popd.ctl"
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, 61002)
        assert ask_as(d, b"status", 61001, 61001) == "refused at connect"
        member = ask_as(d, b"status", 61003, 61002)
        assert json.loads(member)["pid"] == d.proc.pid
        # A supplementary member (SO_PEERGROUPS) is one too.
        member = ask_as(d, b"status", 61004, 61004, groups=(61005, 61002))
        assert json.loads(member)["pid"] == d.proc.pid
        # The socket's mode is one line of defence; SO_PEERCRED is the other.
        os.chmod(path, 0o666)
        assert ask_as(d, b"status", 61001, 61001) == "error: permission denied\n"
        d.wait_for_log("control socket: refused a caller")
    with Daemon() as d:
        st = os.stat(d.base / "popd.ctl")
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
        assert ask_as(d, b"status", 61001, 61001) == "refused at connect"


def test_bad_requests_get_one_error_line():
    with Daemon() as d:
        for request in (b"bogus\n", b"kick user\n", b"kick pid 1\n", b"kick address x\n",
                        b"who \xff\n", b"status\x00\n", b"s" * 300):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(d.base / "popd.ctl"))
                s.sendall(request)
                answer = s.makefile("rb").read()
            assert answer.startswith(b"error: ") and answer.count(b"\n") == 1, (request, answer)
        assert ctl(d, "status").returncode == 0


def test_counters_move_exactly_as_a_scripted_run_predicts():
    box = msg(1) + msg(2) + msg(3)
    with Daemon(limits={"max_per_ip": 2}) as d:
        d.write_mbox("alice", box)
        before = ctl_json(d, "stats")
        # One per-address refusal.
        held = [socket.create_connection((d.host, d.port), source_address=("127.0.0.5", 0))
                for _ in range(2)]
        for s in held:
            s.recv(100)
        third = socket.create_connection((d.host, d.port), source_address=("127.0.0.5", 0))
        assert third.recv(100).startswith(b"-ERR [SYS/TEMP]")
        for s in held + [third]:
            s.close()
        # Two failed USER/PASS logins and one failed AUTH PLAIN, then a login,
        # two RETRs and a DELE applied at QUIT.
        c = SourcePOP3(d.host, d.port, "127.0.0.6")
        for _ in range(2):
            c.user("alice")
            with pytest.raises(poplib.error_proto):
                c.pass_("wrong")
        c.quit()
        c = SourcePOP3(d.host, d.port, "127.0.0.6")
        with pytest.raises(poplib.error_proto):
            c._shortcmd("AUTH PLAIN AGFsaWNlAHdyb25n")       # \0alice\0wrong
        c.user("alice")
        c.pass_(USERS["alice"][0])
        octets = sum(int(c.list(n).split()[2]) for n in (1, 2))
        c.retr(1), c.retr(2)
        c.dele(3)
        c.quit()
        d.wait_for_log("session end: ")
        after = wait_for(lambda: (lambda a: a if a["logins"]["PASS"]["ok"] == 1
                                  and a["logins"]["PLAIN"]["failed"] == 1 else None)(
            ctl_json(d, "stats")))
        assert after, ctl_json(d, "stats")
    delta = lambda *keys: _get(after, keys) - _get(before, keys)  # noqa: E731
    assert delta("refused", "per-ip") == 1 and delta("refused", "limit") == 0
    assert delta("logins", "PASS", "failed") == 2 and delta("logins", "PASS", "ok") == 1
    assert delta("logins", "PLAIN", "failed") == 1 and delta("logins", "PLAIN", "ok") == 0
    assert delta("connections") == 5
    assert delta("sessions") == 1 and delta("retrieved") == 2 and delta("deleted") == 1
    # What RETR sends: the RFC 1939 octets, one byte more for each line it
    # dot-stuffs (msg() has one, ".starts with dot"), and the terminator.
    assert delta("bytes_sent") == octets + 2 * 1 + 2 * len(b".\r\n")
    assert delta("login_seconds", "count") == 1


def test_a_session_killed_for_another_reason_is_counted_as_other():
    """A granted session whose state directory the supervisor cannot use
    (here a file where <state_dir>/<uid>/ should be) is killed, and
    counted under killed "other": the only reason not counted before."""
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        (d.base / "state" / str(USERS["alice"][1])).write_text("not a directory\n")
        before = ctl_json(d, "stats")["killed"]
        c = poplib.POP3(d.host, d.port, timeout=10)
        c.user("alice")
        with pytest.raises((poplib.error_proto, OSError)):
            c.pass_(USERS["alice"][0])
            c.stat()
        d.wait_for_log("has no usable state directory; killing it")
        after = wait_for(lambda: (lambda k: k if k["other"] > before["other"] else None)(
            ctl_json(d, "stats")["killed"]))
        assert after and after["other"] == before["other"] + 1, ctl_json(d, "stats")
        assert {r: after[r] - before[r] for r in after if r != "other"} == dict.fromkeys(
            (r for r in after if r != "other"), 0)


def _get(data, keys):
    for k in keys:
        data = data[k]
    return data


def test_metrics_parse_as_openmetrics():
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        c = poplib.POP3(d.host, d.port, timeout=10)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        c.quit()
        d.wait_for_log("session end: ")
        text = wait_for(lambda: (lambda t: t if 'result="ok"} 1' in t else None)(
            ctl(d, "metrics").stdout))
        assert text
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert {"popd_connections", "popd_refusals", "popd_logins", "popd_login_seconds",
            "popd_slots", "popd_sessions_killed"} <= set(families)
    logins = {(s.labels["method"], s.labels["result"]): s.value
              for s in families["popd_logins"].samples}
    assert logins[("PASS", "ok")] == 1
    hist = {s.name + s.labels.get("le", ""): s.value
            for s in families["popd_login_seconds"].samples}
    assert hist["popd_login_seconds_count"] == 1 and hist["popd_login_seconds_bucket+Inf"] == 1
