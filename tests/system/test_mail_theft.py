"""Threat "local users stealing mail" (DESIGN.md, Threats): answered by
setuid to the owner, O_NOFOLLOW, owner checks and no mail group by
default; proved by symlink and wrong-owner tests.  A mailbox path planted
as a symbolic link, a hard link or a file of another owner is refused
before the session opens it."""
import os
import poplib

import pytest

from tests.clients import msg
from tests.daemon import USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

ALICE = USERS["alice"]


@pytest.fixture
def popd():
    with Daemon() as d:
        yield d


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "owner"])
def test_planted_files_are_refused(popd, plant):
    target = popd.base / "victim"
    target.write_bytes(msg(1))
    os.chown(target, 61002, 61002)
    path = popd.spool / "alice"
    if plant == "symlink":
        os.symlink(target, path)
    elif plant == "hardlink":
        os.chown(target, ALICE[1], ALICE[1])
        os.link(target, path)
    else:
        popd.write_mbox("alice", msg(1), uid=61002)
    c = poplib.POP3(popd.host, popd.port, timeout=20)
    c.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\]"):
        c.pass_(ALICE[0])
    assert "mailbox %s" % path in popd.log()
