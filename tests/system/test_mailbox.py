"""The mailbox engine through the real daemon: byte-exact RETR/TOP, UIDL
stability, DELE/QUIT keeping concurrent deliveries, nothing lost when a
session child is killed, [IN-USE], bounded memory.  (Planted files:
test_mail_theft.py.)"""
import mailbox
import os
import poplib
import threading
import time

import pytest

from popd import limits
from tests.clients import MBOX, connect_raw, login, msg
from tests.daemon import USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

ALICE = USERS["alice"]


def content_of(raw):
    """What a message's content is (From line and separator dropped)."""
    body = raw.split(b"\n", 1)[1]
    return body[:-1] if body.endswith(b"\n") else body


def sent(raw):
    """The message as poplib returns it joined, i.e. CRLF lines, unstuffed."""
    lines = content_of(raw).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def pop(d, user="alice"):
    c = poplib.POP3(d.host, d.port, timeout=20)
    c.user(user)
    c.pass_(USERS[user][0])
    return c


def uidl(c):
    return [line.split()[1] for line in c.uidl()[1]]


@pytest.fixture
def popd():
    with Daemon() as d:
        yield d


def test_retr_and_top_byte_exact_for_mailbox_mbox(popd, tmp_path):
    path = popd.spool / "alice"
    box = mailbox.mbox(path)
    payloads = [
        b"Subject: plain\n\nline\n",
        b"Subject: dots\n\n.\n..\n.x\nFrom the start\n>From quoted\n",
        b"Subject: 8bit\n\n\xe9t\xe9 \xff\x00 bytes\n",
        b"Subject: empty body\n\n",
        b"Subject: cr\n\nbare\rcr\r\nand crlf\r\n",
    ]
    for p in payloads:
        box.add(p)
    box.flush()
    box.close()
    os.chown(path, ALICE[1], ALICE[1])
    c = pop(popd)
    assert c.stat()[0] == len(payloads)
    for i, p in enumerate(payloads, 1):
        lines = c.retr(i)[1]
        # poplib un-stuffs and splits on CRLF; mailbox.mbox quoted "From " lines.
        expect = p.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ").split(b"\n")[:-1]
        assert [l.replace(b"\r", b"\r") for l in lines] == expect, i
    top = c.top(2, 1)[1]
    assert top == [b"Subject: dots", b"", b"."]
    c.quit()


def test_message_without_trailing_newline_gets_crlf(popd):
    popd.write_mbox("alice", b"From x@y Thu Nov 26 10:00:00 2026\nSubject: t\n\nno newline")
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"USER alice\r\nPASS %s\r\nLIST 1\r\nRETR 1\r\nQUIT\r\n" % ALICE[0].encode())
    out = b"".join(iter(lambda: f.read(1), b""))
    assert b"+OK 1 26\r\n" in out
    assert out.endswith(b"Subject: t\r\n\r\nno newline\r\n.\r\n+OK Bye, 0 message(s) deleted\r\n")


def test_uidl_stable_unique_and_status_header_blind(popd):
    popd.write_mbox("alice", msg(1) + msg(2) + msg(3))
    c = pop(popd)
    first = uidl(c)
    assert len(set(first)) == 3 and all(1 <= len(u) <= 70 for u in first)
    assert all(0x21 <= b <= 0x7E for u in first for b in u)
    c.quit()
    # An MUA marks message 2 read and a new message arrives.
    data = (popd.spool / "alice").read_bytes()
    data = data.replace(b"Subject: message 2\n", b"Subject: message 2\nStatus: RO\nX-UID: 7\n")
    popd.write_mbox("alice", data + msg(4))
    c = pop(popd)
    second = uidl(c)
    assert second[:3] == first and second[3] not in first
    c.dele(1)
    c.quit()
    c = pop(popd)
    assert uidl(c) == second[1:]
    c.quit()


def test_identical_messages_keep_their_own_uids(popd):
    popd.write_mbox("alice", msg(1) + msg(1) + msg(2))
    c = pop(popd)
    ids = uidl(c)
    assert len(set(ids)) == 3
    c.dele(1)                      # delete the first of the two twins
    c.quit()
    c = pop(popd)
    assert uidl(c) == ids[1:]      # the survivor keeps its own id
    c.quit()
    # A new identical arrival gets an id never used before.
    popd.write_mbox("alice", (popd.spool / "alice").read_bytes() + msg(1))
    c = pop(popd)
    now = uidl(c)
    assert now[:2] == ids[1:] and now[2] not in ids
    c.quit()


def test_dele_quit_keeps_mail_delivered_during_the_session(popd):
    popd.write_mbox("alice", msg(1) + msg(2) + msg(3))
    c = pop(popd)
    assert c.stat()[0] == 3
    c.dele(2)
    # Delivery while the session is open is not blocked.
    with open(popd.spool / "alice", "ab") as f:
        f.write(msg(4))
    assert c.stat()[0] == 2
    c.quit()
    assert (popd.spool / "alice").read_bytes() == msg(1) + msg(3) + msg(4)


def test_rset_and_dropped_connection_delete_nothing(popd):
    original = msg(1) + msg(2)
    popd.write_mbox("alice", original)
    c = pop(popd)
    c.dele(1)
    c.rset()
    c.dele(2)
    c.file.close()
    c.sock.close()                # no QUIT
    time.sleep(0.5)
    assert (popd.spool / "alice").read_bytes() == original
    c = pop(popd)
    c.dele(1)
    c.rset()
    c.quit()
    assert (popd.spool / "alice").read_bytes() == original


def test_a_child_killed_mid_session_leaves_the_maildrop_and_the_server_intact(popd):
    big = b"From x@y Thu Nov 26 10:00:00 2026\nSubject: big\n\n" + b"y" * 80 + b"\n" * 1
    data = MBOX + big * 2000
    popd.write_mbox("alice", data)
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"USER alice\r\nPASS %s\r\nDELE 1\r\nRETR 3\r\n" % USERS["alice"][0].encode())
    f.readline(), f.readline(), f.readline()
    (child,) = popd.wait_for_pids("child session", 1)
    os.kill(child, 9)
    f.read()                            # until the server closes the connection
    time.sleep(0.5)
    assert (popd.spool / "alice").read_bytes() == data       # nothing deleted, nothing lost
    c = login(popd)
    assert c.stat()[0] == 2002
    c.quit()


def test_deleted_messages_are_refused(popd):
    popd.write_mbox("alice", msg(1) + msg(2))
    c = pop(popd)
    c.dele(1)
    for call in (lambda: c.retr(1), lambda: c.dele(1), lambda: c.list(1), lambda: c.top(1, 0)):
        with pytest.raises(poplib.error_proto, match="deleted"):
            call()
    for bad in ("0", "3", "-1", "x", "99999999999"):
        with pytest.raises(poplib.error_proto, match="No such message"):
            c.retr(bad)
    assert c.stat() == (1, c.stat()[1])
    c.quit()


def test_file_changed_by_another_program_deletes_nothing(popd):
    popd.write_mbox("alice", msg(1) + msg(2))
    c = pop(popd)
    c.dele(1)
    rewritten = msg(1).replace(b"Subject", b"Status: RO\nSubject") + msg(2)
    with open(popd.spool / "alice", "r+b") as f:     # an MUA rewrote it in place
        f.write(rewritten)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        c.quit()
    assert (popd.spool / "alice").read_bytes() == rewritten


def test_second_session_is_in_use(popd):
    popd.write_mbox("alice", msg(1))
    c = pop(popd)
    other = poplib.POP3(popd.host, popd.port, timeout=20)
    other.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        other.pass_(ALICE[0])
    c.quit()
    pop(popd).quit()               # free again


def rss_anon_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def test_retr_of_a_100mb_message_keeps_memory_bounded(popd):
    body = (b"0123456789" * 7 + b"\n") * (100 * 1024 * 1024 // 71)
    popd.write_mbox("alice", b"From x@y Thu Nov 26 10:00:00 2026\nSubject: big\n\n" + body)
    c = pop(popd)
    (child,) = popd.wait_for_pids("child session", 1)
    before = rss_anon_kb(child)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak.append(rss_anon_kb(child))
            except OSError:
                return
            time.sleep(0.01)
    t = threading.Thread(target=sample)
    t.start()
    c._putcmd("RETR 1")
    assert c._getresp().startswith(b"+OK")
    received = 0
    while True:
        line = c.file.readline()
        if line == b".\r\n":
            break
        received += len(line)
    done.set()
    t.join()
    assert received == len(body) + body.count(b"\n") + len(b"Subject: big\r\n\r\n")
    growth = max(peak) - before
    assert growth < 16 * 1024, f"RssAnon grew by {growth} kB"
    c.quit()


def heap_private_kb(pid):
    """Private_Dirty of the process's [heap] mapping (glibc's brk heap)."""
    found, total = False, 0
    for line in open(f"/proc/{pid}/smaps"):
        if line[:1] in "0123456789abcdef" and "-" in line.split()[0]:
            found = line.rstrip().endswith("[heap]")
        elif found and line.startswith("Private_Dirty:"):
            total += int(line.split()[1])
    return total


def test_an_idle_session_gives_back_the_heap_its_large_replies_used(popd):
    """glibc keeps 256 KiB read buffers in the heap once one was freed
    (its mmap threshold rises); the session trims it when its client goes
    quiet (limits.IDLE_AFTER), and not between RETRs."""
    body = (b"x" * 75 + b"\n") * 40000                  # 3 MB per message
    popd.write_mbox("alice", b"".join(
        b"From a@b Thu Nov 26 10:00:00 2026\nSubject: m%d\n\n" % i + body + b"\n"
        for i in range(4)))
    c = pop(popd)
    (child,) = popd.wait_for_pids("child session", 1)
    for n in (1, 2, 3, 4):
        c.retr(n)
    busy = heap_private_kb(child)                        # within IDLE_AFTER of the reply
    time.sleep(limits.IDLE_AFTER + 1.5)
    idle = heap_private_kb(child)
    assert busy - idle >= 256, (busy, idle)
    assert c.stat()[0] == 4                              # and the session goes on
    c.quit()




# -- a real MDA and the dot-lock helper -------------------------------------------

PROCMAIL = "/usr/bin/procmail"
needs_procmail = pytest.mark.skipif(not os.path.exists(PROCMAIL), reason="procmail missing")
DELIVERED = b"From: mda@example.org\nSubject: delivered by procmail\n\nhello from procmail\n"


def procmail_deliver(d, user="alice"):
    """Deliver DELIVERED to the user's mbox with procmail, as the owner,
    taking its usual locks (dot-lock + fcntl); returns the finished process."""
    import subprocess
    uid = USERS[user][1]
    rc = d.base / "procmailrc"
    rc.write_text(":0:\n$MBOX\n")
    os.chmod(rc, 0o644)
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PROCMAIL, "-m",
         "-f", "mda@example.org", f"MBOX={d.spool / user}", "LOCKSLEEP=1", str(rc)],
        input=DELIVERED, env={"PATH": "/usr/bin:/bin", "HOME": str(d.base), "SHELL": "/bin/sh"},
        cwd=d.base, capture_output=True, timeout=30)


@needs_procmail
def test_procmail_delivers_during_a_session_and_nothing_is_lost(popd):
    os.chmod(popd.spool, 0o1777)        # procmail and popd may both dot-lock here
    popd.write_mbox("alice", msg(1) + msg(2) + msg(3))
    c = pop(popd)
    c.dele(2)
    started = time.monotonic()
    run = procmail_deliver(popd)
    assert run.returncode == 0
    assert time.monotonic() - started < 5          # not blocked by the open session
    c.quit()
    data = (popd.spool / "alice").read_bytes()
    assert data.startswith(msg(1) + msg(3) + b"From mda@example.org ")
    assert data.endswith(DELIVERED + b"\n")
    c = pop(popd)
    assert c.stat()[0] == 3
    assert c.retr(3)[1][-1] == b"hello from procmail"
    c.quit()


@needs_procmail
def test_dotlock_group_helper_locks_for_the_session():
    mail_gid = 60200
    with Daemon(extra={"mail": {"dotlock_group": mail_gid}}) as d:
        os.chown(d.spool, 0, mail_gid)
        os.chmod(d.spool, 0o2775)          # Debian's /var/mail: 2775 root:mail
        d.write_mbox("alice", msg(1) + msg(2))
        c = pop(d)
        (child,) = d.wait_for_pids("child session", 1)
        st = open(f"/proc/{child}/status").read()
        gids = [line for line in st.splitlines() if line.startswith(("Gid:", "Groups:"))]
        assert str(mail_gid) not in " ".join(gids)      # the session never holds it
        from tests.daemon import descendants, status
        def gid(pid):
            try:
                return status(pid)["Gid"].split()[0]
            except OSError:                     # a process that just exited
                return None
        helpers = [p for p in descendants(child) if gid(p) == str(mail_gid)]
        assert len(helpers) == 1                        # its lock helper does
        from tests.daemon import title
        assert title(helpers[0]) == "popd: lock-helper"  # and says what it is
        st = status(helpers[0])
        assert st["Uid"].split()[0] == str(USERS["alice"][1]) and st["CapPrm"] == "0" * 16
        c.dele(1)
        c.quit()
        assert (d.spool / "alice").read_bytes() == msg(2)
        assert not (d.spool / "alice.lock").exists()
        assert "cannot lock" not in d.log()
