"""Threat "unbounded forking" (DESIGN.md, Threats): answered by a capped
pool, spawn pacing and back-off; proved by "cap never exceeded; crash loop
idles".  A killed slot and a killed spawner are replaced, a crash loop
backs off instead of forking hundreds of times a second, and a reload
replaces the idle slots without a failed spawn.  (The caps themselves:
test_connection_caps.py.)"""
import os
import signal
import time

import pytest

from tests.clients import MBOX, login, served
from tests.daemon import Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


def test_killed_slot_is_replaced(popd):
    idle = popd.wait_for_pids("child idle", 2)
    os.kill(idle[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = popd.pids("child idle")
        if len(now) == 2 and idle[0] not in now:
            break
        time.sleep(0.05)
    assert len(now) == 2 and idle[0] not in now
    login(popd).quit()


def test_killed_spawner_is_replaced(popd):
    """The supervisor notices at the next fork, starts a new spawner and
    backs off; slots come back and logins work."""
    idle = popd.wait_for_pids("child idle", 2)
    (spawner,) = popd.spawners()
    os.kill(spawner, signal.SIGKILL)
    os.kill(idle[0], signal.SIGKILL)               # so a slot is needed
    popd.wait_for_log("spawner failed")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = popd.spawners()
        if len(now) == 1 and now != [spawner] and len(popd.pids("child idle")) == 2:
            break
        time.sleep(0.05)
    assert len(now) == 1 and now != [spawner]
    assert len(popd.pids("child idle")) == 2
    login(popd).quit()


def test_crash_loop_backs_off():
    with Daemon() as d:
        d.wait_for_pids("child idle", 2)
        # Without its chroot every new front dies at once: a crash loop.
        os.rmdir(d.base / "empty")
        d.base.joinpath("empty").write_text("not a directory")
        for pid in d.pids("child idle"):
            os.kill(pid, signal.SIGKILL)
        time.sleep(4)
        crashes = [line for line in d.log().splitlines() if "exited before serving" in line]
        # 0.1 s doubling: about 6 in 4 s; without back-off there would be hundreds.
        assert 3 <= len(crashes) < 15, d.log()
        assert "next spawn in 1.6 s" in d.log()
        assert d.proc.poll() is None


def test_a_reload_replaces_idle_slots_without_warnings():
    with Daemon() as d:
        d.wait_for_pids("child idle", 2)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("SIGHUP: configuration reloaded")
        time.sleep(1.5)
        assert "exited before serving a client" not in d.log()
        served(d, "bob", "127.0.0.1")
