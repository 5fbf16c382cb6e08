"""The two servers bench/compare.py measures, set up the same way.

Runs in: the benchmark process, as root.

popd runs through tests/daemon.py's Daemon (numeric uids, temporary
directories), with an RSA-2048 certificate like the Dovecot anchor runs.
Dovecot runs from the Debian package with its own configuration file under
the benchmark's temporary directory (its own base_dir, state_dir, logs and
loopback ports: nothing under /etc/dovecot or /run/dovecot is used), the
same users (uid/gid/home from a passwd-file holding popd's very hashes), the
same certificate and copies of the same mailboxes.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.daemon import Daemon, descendants, free_port  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# -- measuring a server's processes ----------------------------------------------

class Tree:
    """A server's processes found as descendants of its first process.
    CPU: the live processes plus what they have reaped (a reaped process's
    time is in its parent's cutime/cstime).  Blind to processes reaped by
    a parent that ignores SIGCHLD (popd's slot child does, for its front)."""

    kind = "process tree (/proc)"

    def __init__(self, root):
        self.root = root

    def pids(self):
        return descendants(self.root) | {self.root}

    def cpu(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15])
            except (OSError, IndexError, ValueError):
                pass
        return total / CLK

    def spawn(self, start):
        return start()

    def remove(self):
        pass


class CpuGroup:
    """A cgroup v2 the server is started in (the benchmark steps into it
    for the fork and straight back out): cpu.stat counts every process the
    server ever ran, however it was reaped, and cgroup.procs lists them
    all.  Only the core cgroup files are used, no controller."""

    kind = "cgroup v2 cpu.stat"

    def __init__(self, name):
        mount = None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    mount = left.split()[4]
                    break
        own = None
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    own = line[3:].strip()
        if mount is None or own is None:
            raise OSError("no cgroup v2 hierarchy")
        self.home = Path(mount + own.rstrip("/"))
        self.dir = self.home / f"popd-compare-{os.getpid()}-{name}"
        self.dir.mkdir()
        self.root = None
        (self.dir / "cpu.stat").read_text()

    def spawn(self, start):
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))
        try:
            return start()
        finally:
            (self.home / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self):
        return {int(x) for x in (self.dir / "cgroup.procs").read_text().split()}

    def cpu(self):
        for line in (self.dir / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return 0.0

    def remove(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                self.dir.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    print(f"warning: {self.dir} not removed: {self.pids()} still in it",
                          file=sys.stderr)
                    return
                time.sleep(0.2)


def process_group(name, use_cgroup=True):
    if use_cgroup:
        try:
            return CpuGroup(name)
        except OSError:
            pass
    return None


def pss_kb(pids):
    """Sum of Pss over the processes (smaps_rollup)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def machine_busy_seconds():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK


def wait_settled(procs, min_procs=0, quiet=1.0, timeout=60.0):
    """Wait until the server's process count has not changed for `quiet`
    seconds (and is at least min_procs); return the pids."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        pids = procs.pids()
        if len(pids) != last:
            last, since = len(pids), time.monotonic()
        elif len(pids) >= min_procs and time.monotonic() - since >= quiet:
            return pids
        time.sleep(0.1)
    return procs.pids()


def greets(host, port, timeout=1.0, ctx=None):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if ctx:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    return t.recv(64).startswith(b"+OK")
            return s.recv(64).startswith(b"+OK")
    except OSError:
        return False


# -- popd -------------------------------------------------------------------------

class BenchDaemon(Daemon):
    """tests/daemon.py's Daemon with an RSA-2048 certificate (trustme's
    default is ECDSA; the anchor runs used RSA-2048, and the handshake's
    cost depends on it)."""

    key_type = "rsa"


class Popd:
    name = "popd"

    def __init__(self, users, limits, tls, key_type="rsa", level="info", cgroup=True,
                 label="popd"):
        """users: {login: (password, uid, gid)}; cgroup: start it in a
        CpuGroup if the machine has cgroup v2, else measure its tree."""
        BenchDaemon.key_type = key_type
        self.cgroup, self.label, self.group = cgroup, label, None
        self.d = BenchDaemon(users=users, limits=limits, tls=tls, plaintext="always",
                             extra={"logging": {"level": level}})
        self.users = users
        self.host = self.d.host
        self.port = self.d.port                 # plain + STLS
        self.tls_port = self.d.tls_port         # implicit TLS
        self.spool = self.d.spool
        self.state = self.d.base / "state"
        self.spare = limits.get("spare_children", 0)

    @property
    def tls_files(self):
        return self.d.base / "cert.pem", self.d.base / "key.pem", self.d.ca_file

    def passwd_lines(self):
        return self.d.passwd_file.read_text().splitlines()

    def start(self):
        self.group = process_group(self.label, self.cgroup)
        if self.group:
            self.group.spawn(lambda: self.d.start(wait=False))
            self.procs = self.group
        else:
            self.d.start(wait=False)
            self.procs = Tree(self.d.proc.pid)
        self.d.wait_for_log("ready:", timeout=30)
        self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        """All spare slots forked and the port answering."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.d.pids("child idle")) >= self.spare and greets(self.host, self.port):
                break
            time.sleep(0.1)
        wait_settled(self.procs, quiet=0.5, timeout=10)

    def install_mbox(self, login, source):
        uid = self.users[login][1]
        _install(source, self.spool / login, uid)
        statedir = self.state / str(uid)
        if statedir.is_dir():                   # index, UIDL state: a first open
            for entry in statedir.iterdir():
                if entry.is_file():
                    entry.unlink()

    def stop(self):
        if self.d.proc is None:                 # never started
            shutil.rmtree(self.d.base, ignore_errors=True)
            if self.group:
                self.group.remove()
        elif not getattr(self, "stopped", False):
            self.stopped = True
            self.d.__exit__(None, None, None)
            if self.group:
                self.group.remove()

    def log_tail(self, lines=30):
        return "\n".join(self.d.log().splitlines()[-lines:])


# -- Dovecot ----------------------------------------------------------------------

def ensure_dovecot():
    """dovecot-pop3d from Debian, installed if missing, never started as a
    system service (policy-rc.d denies it; one is put in place for the
    install if the machine has none)."""
    if shutil.which("dovecot") and Path("/usr/lib/dovecot/pop3").exists():
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# popd bench/compare.py: no service starts\nexit 101\n")
        policy.chmod(0o755)
        made = True
    try:
        print("installing dovecot-pop3d (apt-get install -y dovecot-pop3d) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "dovecot-pop3d"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    finally:
        if made:
            policy.unlink()


def dovecot_version():
    try:
        return subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "?"


DOVECOT_CONF = """\
# bench/compare.py: the anchor runs' configuration (stock 2.3 defaults
# otherwise: high-security pop3-login, process_limit 100, ...)
instance_name = popd-compare
base_dir = {base}/base
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.info.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{dh}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {first_uid}
mail_location = mbox:{base}/home/%n/mail:INBOX={base}/spool/%n:INDEX={base}/index/%n
pop3_no_flag_updates = yes
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
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service pop3 {{
  process_limit = 1024
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


class Dovecot:
    name = "Dovecot"

    def __init__(self, workdir, users, passwd_lines, tls_files, first_uid, cgroup=True):
        self.cgroup, self.group = cgroup, None
        self.base = Path(workdir) / "dovecot"
        self.base.mkdir(mode=0o755)
        self.users = users
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        self.spool = self.base / "spool"
        self.spool.mkdir()
        os.chmod(self.spool, 0o1777)            # dot-locks next to the mbox, like /var/mail
        for d in ("home", "index"):
            (self.base / d).mkdir(mode=0o755)
        entries = []
        for line in passwd_lines:               # popd's hashes, with a home
            login, hashed, uid, gid = line.split(":")[:4]
            home = self.base / "home" / login
            for path in (home, home / "mail", self.base / "index" / login):
                path.mkdir(exist_ok=True)
                os.chown(path, int(uid), int(gid))
                os.chmod(path, 0o700)
            entries.append(f"{login}:{hashed}:{uid}:{gid}::{home}::")
        passwd = self.base / "passwd"
        passwd.write_text("\n".join(entries) + "\n")
        import grp
        os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
        os.chmod(passwd, 0o640)
        cert, key, self.ca_file = tls_files
        dh = "/usr/share/dovecot/dh.pem"
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(DOVECOT_CONF.format(
            base=self.base, cert=cert, key=key, first_uid=first_uid, port=self.port,
            tls_port=self.tls_port, dh=f"ssl_dh = <{dh}" if os.path.exists(dh) else ""))
        self.proc = None

    def start(self):
        self.log_fh = open(self.base / "dovecot.stderr", "ab")
        self.group = process_group("dovecot", self.cgroup)
        self.proc = (self.group or Tree(None)).spawn(lambda: subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
            stdout=self.log_fh, stderr=self.log_fh, start_new_session=True))
        self.procs = self.group or Tree(self.proc.pid)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited {self.proc.returncode}:\n{self.log_tail()}")
            if greets(self.host, self.port) and greets(self.host, self.tls_port, ctx=ctx):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"dovecot did not answer:\n{self.log_tail()}")
        wait_settled(self.procs, quiet=0.5, timeout=10)
        return self

    def install_mbox(self, login, source):
        uid = self.users[login][1]
        _install(source, self.spool / login, uid)
        for d in (self.base / "index" / login, self.base / "home" / login / "mail"):
            for entry in d.iterdir():           # its index: a first open
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def stop(self):
        if self.proc is None:
            return
        pids = self.procs.pids() | Tree(self.proc.pid).pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:                        # only what this master started
            try:
                if b"dovecot" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        if self.proc.poll() is None:
            self.proc.wait()
        self.log_fh.close()
        if self.group:
            self.group.remove()

    def log_tail(self, lines=30):
        out = []
        for name in ("dovecot.stderr", "dovecot.log"):
            p = self.base / name
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


def _install(source, dest, uid):
    """A fresh copy (new inode, page cache warm), owned by the user, 0600."""
    tmp = dest.with_name(dest.name + ".bench-tmp")
    shutil.copyfile(source, tmp)
    os.chown(tmp, uid, uid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
