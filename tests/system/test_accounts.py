"""Issue 12: real sites' accounts against the live daemon.

The system and pam backends go through the real name service and the real
/etc/shadow path: a copy of the host's /etc, with accounts made by useradd
and chpasswd (yescrypt, Debian's default, and SHA-512), is bind-mounted
over /etc in a private mount namespace that popd starts in.  Nothing
points popd at another file.  A Dovecot passwd file with legacy lines and
extra fields, and the mailbox templates %h and %d, use the passwd-file
backend.
"""
import os
import poplib
import shutil
import statistics
import tempfile
from pathlib import Path

import pytest

from popd.broker import passwd
from tests import replies
from tests.daemon import Daemon, attempt, status
from tests.host_accounts import make_etc, namespace_wrap, namespaces_work

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

# login -> (password, uid, crypt method, what to do to the account after)
SYSTEM_USERS = {
    "sysalice": ("Sys alice 1", 61101, "YESCRYPT", None),
    "sysbob": ("Sys bob 2", 61102, "SHA512", None),
    "expired": ("Expired 3", 61103, "YESCRYPT", "chage -E 0 expired"),
    "locked": ("Locked 4", 61104, "YESCRYPT", "usermod -L locked"),
    "noshell": ("Noshell 5", 61105, "YESCRYPT", "usermod -s /usr/sbin/nologin noshell"),
    "mustchange": ("Change 6", 61106, "YESCRYPT", "chage -d 0 mustchange"),
    "md5user": ("Md5 7", 61107, "MD5", None),
}
MBOX = b"From a@b Thu Nov 26 10:00:00 2026\nSubject: hello\n\nhi\n"


@pytest.fixture(scope="module")
def host():
    """A copy of /etc with the test accounts in it; their homes under it."""
    if not namespaces_work():
        pytest.skip("no mount namespaces here")
    root = Path(tempfile.mkdtemp(prefix="popd-accounts-", dir="/tmp"))
    users = {login: (pw, uid, method) for login, (pw, uid, method, _) in SYSTEM_USERS.items()}
    etc = make_etc(root, users, [after for *_, after in SYSTEM_USERS.values() if after])
    shadow = {line.split(":")[0]: line.split(":") for line in (etc / "shadow").read_text().splitlines()}
    assert shadow["sysalice"][1].startswith("$y$") and shadow["sysbob"][1].startswith("$6$")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def system_daemon(host, backend=("system",), **kw):
    d = Daemon(extra={"auth": {"backend": list(backend),
                               "deny_shells": ["/usr/sbin/nologin"]}},
               wrap=namespace_wrap(host / "etc"), **kw)
    for login, (_, uid, _, _) in SYSTEM_USERS.items():
        path = d.spool / login
        path.write_bytes(MBOX)
        os.chown(path, uid, uid)
        os.chmod(path, 0o600)
    return d


def logs_in(d, login, password):
    c = poplib.POP3(d.host, d.port, timeout=30)
    c.user(login)
    c.pass_(password)
    count = c.stat()[0]
    c.quit()
    return count


REFUSALS = {"expired": "account expired", "locked": "account locked",
            "noshell": "shell /usr/sbin/nologin is in auth.deny_shells",
            "mustchange": "password must be changed",
            "md5user": "scheme MD5-CRYPT is weak"}


@pytest.mark.parametrize("backend", ["system", "pam"])
def test_system_accounts_log_in_and_refused_ones_look_like_wrong_passwords(host, backend):
    with system_daemon(host, (backend,)) as d:
        assert logs_in(d, "sysalice", SYSTEM_USERS["sysalice"][0]) == 1     # yescrypt
        assert logs_in(d, "sysbob", SYSTEM_USERS["sysbob"][0]) == 1         # $6$
        wrong, _ = attempt(d, "sysalice", "not her password")
        unknown, _ = attempt(d, "nosuchuser", "whatever")
        assert wrong == unknown == replies.AUTH_FAILED
        for login in REFUSALS:
            reply, _ = attempt(d, login, SYSTEM_USERS[login][0])
            # A weak hash in /etc/shadow: popd's system backend follows
            # auth.allow_weak_schemes; PAM follows its own modules.
            wanted = replies.LOGGED_IN if (backend, login) == ("pam", "md5user") \
                else replies.AUTH_FAILED
            assert reply == wanted, (login, reply)
        log = d.log()
        for login, why in REFUSALS.items():
            if backend == "pam" and login != "noshell":
                why = "pam_acct_mgmt"          # PAM's account step, not popd's own reading
            if backend == "pam" and login in ("locked", "md5user"):
                continue    # pam_unix refuses a locked hash at auth; it takes $1$ as any hash
            assert f'auth refused: rip=127.0.0.1, user="{login}", source={backend}: ' in log
            line = [x for x in log.splitlines() if f'user="{login}", source=' in x][0]
            assert why in line, line
        assert 'reason=unknown-user, user="nosuchuser"' in log
        # uid and gid come from the account.
        assert 'user="sysalice", uid=61101' in log


def test_only_the_broker_holds_the_shadow_group(host):
    shadow_gid = os.stat(host / "etc" / "shadow").st_gid
    with system_daemon(host) as d:
        assert logs_in(d, "sysalice", SYSTEM_USERS["sysalice"][0]) == 1
        c = poplib.POP3(d.host, d.port, timeout=30)
        c.user("sysalice")
        c.pass_(SYSTEM_USERS["sysalice"][0])            # a live session as well
        holders, others = [], []
        for pid, title in d.processes().items():
            try:
                groups = {int(g) for g in status(pid)["Groups"].split()}
            except FileNotFoundError:
                continue
            (holders if shadow_gid in groups else others).append(title)
        c.quit()
        assert holders and all(t.startswith(("popd: auth-broker", "popd: auth-worker"))
                               for t in holders), holders
        roles = " ".join(others)
        assert "supervisor" in roles and "child" in roles and "front" in roles, others
        assert not any(t.startswith("popd: auth-") for t in others), others


@pytest.mark.parametrize("backend", ["system", "pam"])
def test_unknown_system_users_cost_what_wrong_passwords_cost(host, backend):
    with system_daemon(host, (backend,)) as d:
        # Each kind goes first half of the time: on two cores the slot
        # that replaces the previous connection's is forked meanwhile.
        wrong, unknown, refused = [], [], []
        for i in range(12):
            for login, times in sorted((("sysalice", wrong), ("nobody-here", unknown),
                                        ("expired", refused)), reverse=bool(i % 2)):
                reply, took = attempt(d, login, "wrong-password")
                assert reply == replies.AUTH_FAILED
                times.append(took)
        ratio = statistics.median(unknown) / statistics.median(wrong)
        locked = statistics.median(refused) / statistics.median(wrong)
        print(f"{backend}/yescrypt: median unknown {statistics.median(unknown) * 1000:.1f} ms, "
              f"wrong {statistics.median(wrong) * 1000:.1f} ms, expired account "
              f"{statistics.median(refused) * 1000:.1f} ms; ratios {ratio:.3f}, {locked:.3f}")
        assert 0.8 < ratio < 1.25 and 0.8 < locked < 1.25


# -- a Dovecot passwd file ---------------------------------------------------------

def test_a_migrated_dovecot_file_serves_its_good_lines(tmp_path):
    d = Daemon(extra={"mail": {"mbox": "~/mbox"}, "auth": {"allow_weak_schemes": False}})
    try:
        good = passwd.make_hash("good secret", "SHA512-CRYPT", rounds=5000)
        homes = {login: d.base / "home" / login for login in ("good", "off", "lan", "plain")}
        for login, home in homes.items():
            home.mkdir(parents=True)
            os.chmod(home, 0o755)
            (home / "mbox").write_bytes(MBOX)
            os.chown(home / "mbox", 61201, 61201)
            os.chmod(home / "mbox", 0o600)
        lines = [
            f"good:{good}:61201:61201::{homes['good']}::",
            f"plain:{{PLAIN}}good secret:61201:61201::{homes['plain']}::",
            "cram:{CRAM-MD5}e02d374fde0dc75a17a557039a3a5338c7743304777dccd376f332bee68d2cf6:61202:61202",
            f"off:{good}:61201:61201::{homes['off']}::nologin reason=moved",
            f"lan:{good}:61201:61201::{homes['lan']}::allow_nets=192.0.2.0/24 userdb_quota_rule=*:storage=1G",
        ]
        d.passwd_file.write_text("\n".join(lines) + "\n")
        with d:
            assert logs_in(d, "good", "good secret") == 1       # ~/mbox from the home field
            for login in ("plain", "cram", "off", "lan"):
                reply, _ = attempt(d, login, "good secret")
                assert reply == replies.AUTH_FAILED, login
            log = d.log()
            assert f"{d.passwd_file}, line 2: password of 'plain': scheme PLAIN is weak" in log
            assert f"{d.passwd_file}, line 3: password of 'cram': scheme {{CRAM-MD5}} cannot" in log
            assert f"{d.passwd_file}, line 5: extra field 'userdb_quota_rule' of 'lan'" in log
            assert 'user="off", source=passwd-file: nologin (moved)' in log
            assert 'user="lan", source=passwd-file: 127.0.0.1 is outside its allow_nets' in log
            assert "good secret" not in log and "e02d374f" not in log
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


def test_weak_schemes_when_allowed_log_a_rehash_warning():
    d = Daemon(extra={"auth": {"allow_weak_schemes": True}})
    try:
        d.passwd_file.write_text("weak:{PLAIN}weak secret:61001:61001::/nonexistent::\n")
        d.write_mbox("weak", MBOX, uid=61001)
        with d:
            assert logs_in(d, "weak", "weak secret") == 1
            assert ('user="weak" logged in with a weak PLAIN hash in '
                    f'{d.passwd_file}: re-hash it with popd-passwd') in d.log()
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


def test_domain_templates_and_allow_nets_from_the_right_network():
    d = Daemon(extra={"mail": {"mbox": str(Path("/SPOOL") / "%d" / "%n")}})
    try:
        cfg = d.config.read_text().replace("/SPOOL", str(d.spool))
        d.config.write_text(cfg)
        good = passwd.make_hash("dom secret", "SHA512-CRYPT", rounds=5000)
        d.passwd_file.write_text(
            f"bob@example.org:{good}:61002:61002::::allow_nets=127.0.0.0/8\n"
            f"nodomain:{good}:61002:61002::::\n")
        (d.spool / "example.org").mkdir()
        box = d.spool / "example.org" / "bob"
        box.write_bytes(MBOX)
        os.chown(box, 61002, 61002)
        os.chmod(box, 0o600)
        with d:
            assert logs_in(d, "bob@example.org", "dom secret") == 1
            reply, _ = attempt(d, "nodomain", "dom secret")
            assert reply.startswith(b"-ERR [SYS/PERM]"), reply
            assert "no mailbox path: domain of the login '' cannot be part of a path" in d.log()
    finally:
        shutil.rmtree(d.base, ignore_errors=True)
