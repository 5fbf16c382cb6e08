"""The servers a site moves to popd from, run for real from Debian's
packages on a loopback port, for the migration tests
(tests/system/test_migration.py).

Dovecot 2.3 (dovecot-pop3d) runs with its own configuration file, base and
state directories under the test's directory, a passwd-file holding popd's
very hashes and mbox INBOXes in a shared spool; dovecot-lda delivers as the
user, as a site's MTA would run it.  GNU Mailutils' pop3d runs in a private
mount namespace whose /etc holds the test user (tests/host_accounts.py),
since it only knows system accounts.  Both listen on plain POP3 with
USER/PASS: the point is the ids they hand out, and clients must reach popd
later under the same host and port, as after a real switch.
"""
import grp
import os
import signal
import subprocess
import time
from pathlib import Path

from tests import host_accounts

DOVECOT_CONF = """\
instance_name = popd-migration-test
base_dir = {base}/base
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {first_uid}
mail_location = mbox:{base}/home/%n/mail:INBOX={spool}/%n:INDEX={base}/index/%n
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%n {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {base}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

MAILUTILS_CONF = """\
logging {{ syslog no; }};
auth {{ authentication system; authorization system; }};
mailbox {{ mailbox-pattern "mbox:{spool}/${{user}}"; }};
server 127.0.0.1:{port} {{ tls-mode false; }};
"""


def dovecot_available():
    return Path("/usr/lib/dovecot/pop3").exists() and Path("/usr/lib/dovecot/dovecot-lda").exists()


def mailutils_available():
    return subprocess.run(["sh", "-c", "command -v pop3d"], capture_output=True).returncode == 0


def wait_for_greeting(port, proc, log, timeout=30):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"+OK"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not greet on {port}: {log()}")


class Dovecot:
    def __init__(self, base, spool, port, passwd_lines, first_uid):
        self.base, self.spool, self.port = Path(base), Path(spool), port
        self.base.mkdir(mode=0o755)
        for d in ("home", "index"):
            (self.base / d).mkdir(mode=0o755)
        entries = []
        for line in passwd_lines:
            login, hashed, uid, gid = line.split(":")[:4]
            for path in (self.home(login), self.home(login) / "mail", self.base / "index" / login):
                path.mkdir(exist_ok=True)
                os.chown(path, int(uid), int(gid))
                os.chmod(path, 0o700)
            entries.append(f"{login}:{hashed}:{uid}:{gid}::{self.home(login)}::")
        passwd = self.base / "passwd"
        passwd.write_text("\n".join(entries) + "\n")
        os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
        os.chmod(passwd, 0o640)
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(DOVECOT_CONF.format(base=self.base, spool=self.spool,
                                                 port=port, first_uid=first_uid))
        os.chmod(self.conf, 0o644)
        self.proc = None

    def home(self, login):
        return self.base / "home" / login

    def deliver(self, login, uid, message):
        """dovecot-lda as the user, from the environment (no -d: no auth
        lookup), the way a .forward or an MTA's mailbox_command runs it."""
        env = {"PATH": "/usr/bin:/bin", "USER": login, "HOME": str(self.home(login))}
        done = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "/usr/lib/dovecot/dovecot-lda", "-c", str(self.conf), "-o", "log_path=/dev/stderr",
             "-f", "sender@example.org"],
            input=message, env=env, capture_output=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"dovecot-lda: {done.returncode}: {done.stderr!r}")

    def __enter__(self):
        self.log_fh = open(self.base / "dovecot.stderr", "ab")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=self.log_fh,
                                     stderr=self.log_fh, start_new_session=True)
        wait_for_greeting(self.port, self.proc, self.log)
        return self

    def log(self):
        return "\n".join((self.base / n).read_text(errors="replace")[-3000:]
                         for n in ("dovecot.stderr", "dovecot.log") if (self.base / n).exists())

    def __exit__(self, *exc):
        stop(self.proc)
        self.log_fh.close()


class Mailutils:
    def __init__(self, base, spool, port, users):
        """users: {login: (password, uid)}; each gets a system account in
        the namespace's /etc (group = uid)."""
        self.base, self.spool, self.port = Path(base), Path(spool), port
        self.base.mkdir(mode=0o755)
        self.etc = host_accounts.make_etc(
            self.base, {login: (pw, uid, "SHA512") for login, (pw, uid) in users.items()})
        self.conf = self.base / "pop3d.conf"
        self.conf.write_text(MAILUTILS_CONF.format(spool=self.spool, port=port))
        self.proc = None

    def __enter__(self):
        self.log_fh = open(self.base / "pop3d.log", "ab")
        self.proc = subprocess.Popen(
            host_accounts.namespace_wrap(self.etc)
            + ["pop3d", f"--config-file={self.conf}", "--daemon", "--foreground"],
            stdin=subprocess.DEVNULL, stdout=self.log_fh, stderr=self.log_fh,
            start_new_session=True)
        wait_for_greeting(self.port, self.proc, self.log)
        return self

    def log(self):
        return (self.base / "pop3d.log").read_text(errors="replace")[-3000:]

    def __exit__(self, *exc):
        stop(self.proc)
        self.log_fh.close()


def stop(proc):
    """TERM to the server's whole process group, KILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # children that outlived it
    except ProcessLookupError:
        pass
