"""metrics.listen against the real daemon as root: Prometheus' request is
answered with text a real OpenMetrics parser reads, by a process that holds
no capability, runs as login_user in the fronts' chroot under seccomp, and
holds only its listening socket and its channel; hostile scrapers get one
HTTP error each and cannot hold the endpoint or touch POP3 service; a
killed exporter is forked again while POP3 goes on."""
import os
import poplib
import signal
import socket
import shutil
import subprocess
import time

import pytest

from tests.clients import MBOX
from tests.daemon import LOGIN_UID, USERS, Daemon, free_port, socket_kinds, status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/"
                     "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;"
                     "q=0.5,*/*;q=0.1")


def metrics_daemon(**kw):
    port = free_port()
    d = Daemon(extra={"metrics": {"listen": f"127.0.0.1:{port}"}}, **kw)
    d.metrics_port = port
    return d


def request(port, data, timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.makefile("rb").read()


def scrape(port):
    run = subprocess.run(["curl", "-sS", "--fail", "-H", f"Accept: {PROMETHEUS_ACCEPT}",
                          f"http://127.0.0.1:{port}/metrics"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout


def login(d):
    c = poplib.POP3(d.host, d.port, timeout=10)
    c.user("alice")
    c.pass_(USERS["alice"][0])
    count = c.stat()[0]
    c.quit()
    return count


def test_scrape_parses_as_openmetrics_from_a_sandboxed_exporter():
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    with metrics_daemon() as d:
        d.write_mbox("alice", MBOX)
        d.wait_for_log("metrics: serving")
        assert login(d) > 0
        d.wait_for_log("session end: ")
        deadline = time.monotonic() + 10
        while 'popd_logins_total{method="PASS",result="ok"} 1' not in (text := scrape(d.metrics_port)):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        assert families["popd_connections"].samples[0].value == 1
        assert {"popd_login_seconds", "popd_slots", "popd_sessions_killed"} <= set(families)

        [pid] = d.pids("metrics-exporter")
        st = status(pid)
        assert st["PPid"] == str(d.proc.pid)
        assert st["Uid"].split() == [str(LOGIN_UID)] * 4
        assert st["Gid"].split() == [str(LOGIN_UID)] * 4 and st["Groups"] == ""
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (cap, st[cap])
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        assert os.readlink(f"/proc/{pid}/root") == str(d.base / "empty")
        # stdio, its listening socket and its channel: nothing of a slot's,
        # the broker's or the POP3 listeners'.
        kinds = socket_kinds(pid)
        assert kinds.get("listen") == 1 and kinds.get("unix") == 1, kinds
        assert kinds.get("tcp", 0) == 0, kinds
        # HEAD: the headers alone.
        head = request(d.metrics_port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")


def test_hostile_scrapers_get_one_error_each_and_hold_nothing():
    with metrics_daemon() as d:
        d.write_mbox("alice", MBOX)
        d.wait_for_log("metrics: serving")
        port = d.metrics_port
        for data, status_line in (
                (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 "),
                (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"HTTP/1.1 405 "),
                (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", b"HTTP/1.1 400 "),
                (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000, b"HTTP/1.1 431 "),
                (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", b"HTTP/1.1 431 ")):
            answer = request(port, data)
            assert answer.startswith(status_line), (data[:40], answer[:80])
            assert answer.count(b"HTTP/1.1") == 1
        # Scrapers that connect and say nothing fill the exporter's clients
        # for limits.METRICS_CLIENT_TIMEOUT (5 s) at most, then a real
        # scrape is served; POP3 is served all along.
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            assert login(d) > 0
            started = time.monotonic()
            text = scrape(port)
            assert text.endswith("# EOF\n")
            assert time.monotonic() - started < 20
        finally:
            for s in stalled:
                s.close()
        # Still one exporter, the same one: nothing above crashed it.
        assert len(d.pids("metrics-exporter")) == 1
        assert "metrics exporter exited" not in d.log()


def test_killed_exporter_is_forked_again_and_pop3_goes_on():
    with metrics_daemon() as d:
        d.write_mbox("alice", MBOX)
        d.wait_for_log("metrics: serving")
        [first] = d.pids("metrics-exporter")
        os.kill(first, signal.SIGKILL)
        d.wait_for_log("metrics exporter exited")
        assert login(d) > 0                 # no exporter: POP3 does not care
        d.wait_for_log("metrics: serving", count=2, timeout=15)
        [second] = d.pids("metrics-exporter")
        assert second != first
        assert scrape(d.metrics_port).endswith("# EOF\n")


def test_bad_or_busy_metrics_listen_is_one_line_at_start():
    port = free_port()
    for value in ("localhost:9106", "::1:9106", "127.0.0.1:0"):
        d = Daemon(extra={"metrics": {"listen": value}})
        try:
            run = d.check_config()
        finally:
            shutil.rmtree(d.base)
        assert run.returncode == 1
        assert f"metrics.listen: {value!r} is not ADDRESS:PORT" in run.stdout + run.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        d = Daemon(extra={"metrics": {"listen": f"127.0.0.1:{port}"}})
        with d.start(wait=False):
            assert d.proc.wait(timeout=60) == 1
            assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in d.log()
