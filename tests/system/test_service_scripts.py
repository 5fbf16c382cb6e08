"""The init scripts (scripts/popd.service, scripts/popd.init) and the
fail2ban filter and jail (etc/fail2ban/), each checked against the real
thing where one exists: systemd-analyze verifies the unit, the SysV script
starts, reloads and stops the real daemon by its pid file only, and
fail2ban-regex reads log lines the real daemon wrote.  Threat "service
user context" (DESIGN.md, Threats): answered by three dedicated users and a
documented roll-out; proved by the man page and these init scripts.  (The
install step, and the unit's capability set serving a whole session:
test_install.py.)"""
import base64
import os
import poplib
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import replies
from tests.clients import PLAIN_MBOX, SourcePOP3
from tests.daemon import REPO, USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

SETUP = REPO / "scripts" / "popd-setup"
UNIT = REPO / "scripts" / "popd.service"
INIT = REPO / "scripts" / "popd.init"
FILTER = REPO / "etc" / "fail2ban" / "filter.d" / "popd.conf"
JAIL = REPO / "etc" / "fail2ban" / "jail.d" / "popd.conf"

# A client-supplied name that tries to plant a second address in the log line.
INJECTED = 'x", rip=203.0.113.99'
INJECTED_HOST = "203.0.113.99"


# -- the systemd unit -------------------------------------------------------------

def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart's program exists: point it at a stub
    # (popd is not installed in /usr/sbin here).  Everything else is checked
    # as shipped; man pages are not installed either (--man=no).
    stub = tmp_path / "popd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "popd.service"
    unit.write_text(UNIT.read_text().replace("/usr/sbin/popd", str(stub)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "popd.service" not in result.stderr, result.stderr


def test_scripts_parse():
    for shell, script in (("sh", SETUP), ("sh", INIT), ("bash", INIT)):
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{shell} -n {script.name}: {result.stderr}"
    header = INIT.read_text()
    assert header.startswith("#!/bin/sh /lib/init/init-d-script\n### BEGIN INIT INFO\n")
    assert re.search(r"^COMMAND_NAME=none$", header, re.M)


# -- the SysV script ----------------------------------------------------------------

def test_init_script_acts_by_pid_file_only(tmp_path):
    """start, status, reload, stop on the real daemon, through a copy of
    the script pointing at a test config; a stale pid file naming another
    live process (a sentinel that records any signal it gets) is never
    signalled."""
    if not Path("/lib/init/init-d-script").exists():
        pytest.skip("needs Debian's init-d-script (package sysvinit-utils)")
    d = Daemon()
    try:
        # /usr/sbin/popd stands for the venv's console script; this one
        # runs the package from the source tree.
        daemon = d.base / "popd"
        daemon.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                          "from popd.cli import main\nsys.exit(main())\n")
        daemon.chmod(0o755)
        pidfile = d.pidfile                         # the config's pidfile: the same path
        script = INIT.read_text()
        for old, new in (("DAEMON=/usr/sbin/popd", f"DAEMON={daemon}"),
                         ("CONFIG=/etc/popd.yaml", f"CONFIG={d.config}"),
                         ("PIDFILE=/run/popd/popd.pid", f"PIDFILE={pidfile}"),
                         ("LOGFILE=/var/log/popd.log", f"LOGFILE={d.logfile}")):
            assert old in script
            script = script.replace(old, new)
        init = d.base / "popd.init"
        init.write_text(script)
        init.chmod(0o755)

        def action(name):
            return subprocess.run([str(init), name], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=60).returncode

        assert action("status") == 3
        assert action("start") == 0
        pid = int(pidfile.read_text())
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"popd: supervisor")
        assert action("status") == 0
        assert action("start") == 0                 # already running: fine, nothing started
        assert int(pidfile.read_text()) == pid
        deadline = time.monotonic() + 30
        while "ready:" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        client = poplib.POP3("127.0.0.1", d.port, timeout=10)
        assert client.getwelcome() == replies.GREETING
        client.quit()
        assert action("reload") == 0
        assert action("force-reload") == 0
        time.sleep(0.3)
        assert Path(f"/proc/{pid}").exists(), "HUP must not end popd"
        assert action("stop") == 0
        assert not Path(f"/proc/{pid}").exists() and not pidfile.exists()
        assert action("status") == 3
        assert "stopped" in d.log()

        # A stale pid file whose number another process now has: that
        # process must never be signalled.
        caught = d.base / "sentinel-signals"
        sentinel = subprocess.Popen(
            [sys.executable, "-c",
             "import signal, sys, time\n"
             "def note(n, _):\n"
             "    open(sys.argv[1], 'a').write(signal.Signals(n).name + '\\n')\n"
             "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):\n"
             "    signal.signal(s, note)\n"
             "open(sys.argv[1], 'w').close()\n"
             "time.sleep(120)\n", str(caught)])
        try:
            deadline = time.monotonic() + 10
            while not caught.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert caught.exists()
            pidfile.write_text(f"{sentinel.pid}\n")
            assert action("status") == 1
            assert action("stop") == 0              # "not running"
            assert action("reload") != 0
            assert not pidfile.exists()
            time.sleep(0.3)
            assert sentinel.poll() is None and caught.read_text() == ""
        finally:
            sentinel.kill()
            sentinel.wait()

        # popd's exit status is the outcome of the start, even for what
        # fails after it detached; its reason reaches the terminal.
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", d.port))
            taken.listen()
            failed = subprocess.run([str(init), "start"], capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, timeout=60)
        assert failed.returncode == 1
        assert f"popd: cannot listen on 127.0.0.1:{d.port}: Address already in use" \
            in failed.stderr.splitlines(), failed.stderr
        assert not pidfile.exists() and action("status") == 3
    finally:
        if pidfile.exists() and pidfile.read_text().strip().isdigit():
            try:
                os.kill(int(pidfile.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(d.base, ignore_errors=True)


# -- fail2ban ------------------------------------------------------------------

def fail2ban_ips(logfile, extra=()):
    result = subprocess.run(["fail2ban-regex", *extra, "-o", "ip", str(logfile), str(FILTER)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def test_fail2ban_counts_the_failures_the_daemon_logged(tmp_path):
    if shutil.which("fail2ban-regex") is None:
        pytest.skip("fail2ban-regex is not installed (Debian package fail2ban)")
    d = Daemon()
    # A second listener on ::1 for an IPv6 client.
    cfg = yaml.safe_load(d.config.read_text())
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port6 = probe.getsockname()[1]
    cfg["listen"].append({"address": "::1", "port": port6, "tls": "none"})
    d.config.write_text(yaml.safe_dump(cfg))
    d.write_mbox("alice", PLAIN_MBOX)
    password = USERS["alice"][0]
    expected = []                       # (address, method, reason pattern)

    def user_pass(client, name, secret, address, reason):
        client.user(name)
        with pytest.raises(poplib.error_proto):
            client.pass_(secret)
        expected.append((address, "PASS", reason))

    def auth_plain(client, name, secret, address, reason):
        token = base64.b64encode(b"\0" + name.encode() + b"\0" + secret.encode())
        with pytest.raises(poplib.error_proto):
            client._shortcmd("AUTH PLAIN " + token.decode())
        expected.append((address, "PLAIN", reason))

    with d:
        c = poplib.POP3("127.0.0.1", d.port, timeout=10)
        user_pass(c, "alice", "wrong", "127.0.0.1", "password-mismatch")
        user_pass(c, "nosuchuser", "x", "127.0.0.1", "unknown-user")
        # USER takes one argument: with spaces the name never reaches the
        # broker (and so makes no failure line) ...
        with pytest.raises(poplib.error_proto):
            c.user(INJECTED)
        # ... without them it does, sanitised.
        user_pass(c, INJECTED.replace(" ", ""), "x", "127.0.0.1", "unknown-user|bad-name")
        c.close()

        c = SourcePOP3("127.0.0.1", d.port, "127.0.0.2")
        auth_plain(c, INJECTED, "x", "127.0.0.2", "bad-name")      # SASL allows spaces
        auth_plain(c, "alice", "wrong", "127.0.0.2", "password-mismatch")
        c.user("alice")
        assert c.pass_(password).startswith(b"+OK")                 # a success: no match
        c.quit()

        c = poplib.POP3("::1", port6, timeout=10)
        user_pass(c, "alice", "wrong", "::1", "password-mismatch")
        c.close()
        d.wait_for_log("auth failed: ", count=len(expected))
        main_pid = d.proc.pid
        log = d.log()

    # What reached the log: one line per failure, address first, the
    # client's name last, quoted and escaped.
    # stderr to a file: a timestamp first (logging.timestamps, on by default there).
    raw = [line for line in log.splitlines() if " popd[" in line]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d popd\[", line)
               for line in raw), raw[:3]
    lines = [line.split(" ", 1)[1] for line in raw]
    failures = [line for line in lines if "auth failed: " in line]
    assert len(failures) == len(expected)
    for line, (address, method, reason) in zip(failures, expected):
        assert re.fullmatch(rf'popd\[\d+\]: \[[0-9a-f]{{8}}\] auth failed: '
                            rf'rip={re.escape(address)}, method={method}, attempt=\d, '
                            rf'reason=(?:{reason}), user="[^"]*"', line), line
    assert any(r'user="x\x22, rip=203.0.113.99"' in line for line in failures)
    assert any(r'user="x\x22,rip=203.0.113.99"' in line for line in failures)

    # popd formats a line the same for stderr and syslog ("popd[PID]: text");
    # here it is as rsyslog writes it to mail.log (logging.target: syslog),
    # and as it arrives there through the journal under systemd with
    # logging.target: stderr, the journal's own "popd[PID]: " in front.
    host = socket.gethostname()
    stamp = time.strftime("%b %e %H:%M:%S")
    mail_log = tmp_path / "mail.log"
    mail_log.write_text("".join(f"{stamp} {host} {line}\n" for line in lines))
    journal_log = tmp_path / "journal.log"
    journal_log.write_text("".join(f"{stamp} {host} popd[{main_pid}]: {line}\n"
                                   for line in lines))
    stderr_log = tmp_path / "popd.log"
    stderr_log.write_text("".join(line + "\n" for line in raw))
    for logfile in (mail_log, journal_log, stderr_log):
        ips = fail2ban_ips(logfile)
        assert ips == [address for address, _, _ in expected], logfile.read_text()
        assert INJECTED_HOST not in ips


def test_fail2ban_jail_loads_with_the_filter(tmp_path):
    """fail2ban-client assembles the jail from a copy of the host's
    fail2ban configuration plus popd's filter and jail."""
    if shutil.which("fail2ban-client") is None or not Path("/etc/fail2ban/jail.conf").exists():
        pytest.skip("fail2ban is not installed (Debian package fail2ban)")
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    shutil.rmtree(conf / "jail.d")
    (conf / "jail.d").mkdir()
    shutil.copy(FILTER, conf / "filter.d" / "popd.conf")
    shutil.copy(JAIL, conf / "jail.d" / "popd.conf")
    result = subprocess.run(["fail2ban-client", "-c", str(conf), "-d"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    dump = result.stdout
    assert "['add', 'popd'," in dump
    for setting in ("['set', 'popd', 'maxretry', 5]", "['set', 'popd', 'findtime', '10m']",
                    "['set', 'popd', 'bantime', '1h']"):
        assert setting in dump
    assert "--dports pop3,pop3s" in dump
    assert "ERROR" not in result.stderr, result.stderr
