"""Start the real popd as root on loopback for system tests.

Numeric uids/gids (no useradd needed), a temporary directory for the spool,
the state directory, the fronts' chroot and the passwd file, and a free
port.  Processes are found through /proc as descendants of the supervisor.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from popd.broker import passwd

REPO = Path(__file__).resolve().parent.parent

POPD_UID = 60010        # user/group: children before login
LOGIN_UID = 60011       # login_user/group: fronts
BROKER_UID = 60012      # broker_user/group
FIRST_VALID_UID = 61000
USERS = {               # login -> (password, uid, gid)
    "alice": ("alice-secret", 61001, 61001),
    "bob": ("bob pass with spaces", 61002, 61002),
    "lowuid": ("low-secret", 1001, 1001),
}
HASH_ROUNDS = 5000      # fast hashes keep the suite quick; schemes are tested elsewhere


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Daemon:
    """One popd instance; use as a context manager."""

    key_type = "ecdsa"          # trustme's default; the benchmark uses RSA like its anchor

    def __init__(self, limits=None, users=USERS, extra=None, listen_host="127.0.0.1",
                 tls=False, plaintext=None, schemes=None, wrap=()):
        """tls=True: `port` is a STARTTLS listener and `tls_port` an implicit
        TLS one, with a trustme certificate for localhost/127.0.0.1 (CA in
        `ca_file`); plaintext defaults to tls-only then, else to always.
        `wrap`: a command popd runs under (e.g. unshare and mounts), which
        must exec it so that the pid stays the supervisor's."""
        self.wrap = list(wrap)
        self.base = Path(tempfile.mkdtemp(prefix="popd-test-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.spool = self.base / "spool"
        self.spool.mkdir(mode=0o755)
        self.port = free_port(listen_host)
        self.host = listen_host
        self.tls_port = self.ca = self.ca_file = None
        self.passwd_file = self.base / "passwd"
        lines = []
        for login, (password, uid, gid) in users.items():
            scheme = (schemes or {}).get(login, "SHA512-CRYPT")
            stored = passwd.make_hash(password, scheme,
                                      rounds=HASH_ROUNDS if scheme == "SHA512-CRYPT" else None)
            lines.append(passwd.format_entry(login, stored, uid, gid))
        self.passwd_file.write_text("\n".join(lines) + "\n")
        os.chown(self.passwd_file, 0, BROKER_UID)
        os.chmod(self.passwd_file, 0o640)
        cfg = {
            "listen": [{"address": listen_host, "port": self.port, "tls": "none"}],
            "user": POPD_UID, "group": POPD_UID,
            "login_user": LOGIN_UID, "login_group": LOGIN_UID,
            "broker_user": BROKER_UID, "broker_group": BROKER_UID,
            "login_chroot": str(self.base / "empty"),
            "pidfile": str(self.base / "popd.pid"),
            "auth": {"passwd_file": str(self.passwd_file)},
            "mail": {"mbox": str(self.spool / "%u"), "state_dir": str(self.base / "state"),
                     "first_valid_uid": FIRST_VALID_UID, "first_valid_gid": FIRST_VALID_UID},
            # No guessing delays unless a test asks for them: tests make
            # wrong logins on purpose and would otherwise wait them out.
            "limits": {"max_children": 8, "spare_children": 2, "max_per_ip": 4,
                       "shutdown_grace": 5, "auth_delay_min": 0, **(limits or {})},
            "logging": {"target": "stderr", "level": "debug"},
        }
        cfg["auth"]["plaintext"] = plaintext or ("tls-only" if tls else "always")
        if tls:
            self.tls_port = free_port(listen_host)
            cfg["listen"] = [
                {"address": listen_host, "port": self.port, "tls": "starttls"},
                {"address": listen_host, "port": self.tls_port, "tls": "implicit"}]
            cfg["tls"] = self.make_certificate()
        for key, value in (extra or {}).items():
            # Sections are merged, so a test can set one key of "mail".
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        self.config = self.base / "popd.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.logfile = self.base / "popd.log"
        self.pidfile = self.base / "popd.pid"
        self.proc = None

    def make_certificate(self):
        """A throwaway CA and a server certificate (fetchmail wants the
        common name, and checks it as a DNS name: poll localhost)."""
        import trustme
        kind = {"rsa": trustme.KeyType.RSA, "ecdsa": trustme.KeyType.ECDSA}[self.key_type]
        self.ca = trustme.CA(key_type=kind)
        cert = self.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost",
                                  key_type=kind)
        self.ca_file = self.base / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert_file, key_file = self.base / "cert.pem", self.base / "key.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        os.chmod(key_file, 0o600)
        with open(cert_file, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        return {"cert": str(cert_file), "key": str(key_file)}

    def client_context(self):
        """An ssl client context that trusts this daemon's CA."""
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    # -- mailboxes -----------------------------------------------------------
    def write_mbox(self, login, data, uid=None):
        path = self.spool / login
        path.write_bytes(data)
        owner = uid if uid is not None else USERS[login][1]
        os.chown(path, owner, owner)
        os.chmod(path, 0o600)
        return path

    # -- life cycle ------------------------------------------------------------
    def start(self, wait=True, foreground=True):
        """foreground=False: popd without -f.  The launcher must exit 0
        (the daemon is ready); self.proc then follows the detached
        supervisor through the pid file."""
        self.log_fh = open(self.logfile, "ab")
        if not foreground:
            self.launcher = self.launch(stdout=self.log_fh, stderr=self.log_fh)
            assert self.launcher.returncode == 0, self.log()
            self.proc = Detached(int(self.pidfile.read_text()))
            return self
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "popd", "-c", str(self.config), "-f"],
            stdin=subprocess.DEVNULL, stdout=self.log_fh, stderr=self.log_fh,
            cwd=REPO, start_new_session=True)
        if wait:
            self.wait_for_log("ready:", timeout=30)
        return self

    def launch(self, timeout=90, **kw):
        """Run `popd` without -f and wait for the launcher (not the daemon):
        with logging.target: stderr the daemon keeps the launcher's stderr,
        so capture it with a pipe only when the daemon is bound to fail."""
        return subprocess.run([*self.wrap, sys.executable, "-m", "popd", "-c", str(self.config)],
                              stdin=subprocess.DEVNULL, cwd=REPO, timeout=timeout, **kw)

    def check_config(self, timeout=60):
        """`popd -c <config> --check-config`, its output captured as text."""
        return subprocess.run([*self.wrap, sys.executable, "-m", "popd", "-c", str(self.config),
                               "--check-config"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, cwd=REPO, timeout=timeout)

    def wait_for_log(self, text, timeout=10.0, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"popd exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")

    def log(self):
        return self.logfile.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"popd did not stop on {sig}:\n{self.log()}")

    def __enter__(self):
        return self if self.proc else self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, AttributeError):
                pass
            self.log_fh.close()
            kill_descendants(self.proc.pid)
            if isinstance(self.proc, Detached):     # not in a process group of ours
                self.proc.send_signal(signal.SIGKILL)
            shutil.rmtree(self.base, ignore_errors=True)

    # -- processes ---------------------------------------------------------------
    def processes(self):
        """{pid: title} for the supervisor and all its descendants."""
        return {pid: title(pid) for pid in descendants(self.proc.pid) | {self.proc.pid}
                if title(pid)}

    def pids(self, role):
        return sorted(pid for pid, t in self.processes().items() if t.startswith(f"popd: {role}"))

    def spawners(self):
        """The spawner(s): children of the supervisor titled spawner (a slot
        the spawner has just forked carries its title for a moment)."""
        found = []
        for pid in self.pids("spawner"):
            try:
                if status(pid).get("PPid") == str(self.proc.pid):
                    found.append(pid)
            except FileNotFoundError:
                pass
        return found

    def wait_for_pids(self, role, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids(role)
            if len(pids) == count:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"{count} x {role!r} expected; have {self.processes()}")


def attempt(d, user, password, source="127.0.0.1"):
    """One USER/PASS on a fresh connection from `source`: (the reply to
    PASS, seconds it took)."""
    from tests import replies
    s = socket.create_connection((d.host, d.port), timeout=60, source_address=(source, 0))
    f = s.makefile("rb")
    assert f.readline().startswith(replies.GREETING)
    s.sendall(b"USER %s\r\n" % user.encode())
    f.readline()
    t = time.monotonic()
    s.sendall(b"PASS %s\r\n" % password.encode())
    reply = f.readline().rstrip()
    took = time.monotonic() - t
    try:
        s.sendall(b"QUIT\r\n")
    except OSError:                     # the server already ended it
        pass
    s.close()
    return reply, took


class Detached:
    """The part of Popen the tests use, for a detached supervisor: not our
    child, so its exit status is unknown (returncode -1 once it is gone)."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None
        self.started = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19]

    def poll(self):
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            gone = stat[0] == b"Z" or stat[19] != self.started      # zombie, or pid reused
        except OSError:
            gone = True
        if gone and self.returncode is None:
            self.returncode = -1
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode


def title(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def parents():
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                out[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(root):
    ppid = parents()
    found, frontier = set(), {root}
    while frontier:
        nxt = {pid for pid, parent in ppid.items() if parent in frontier} - found
        found |= nxt
        frontier = nxt
    return found


def kill_descendants(root):
    for pid in descendants(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def status(pid):
    """/proc/PID/status as a dict of strings."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def gone(pid):
    """True once `pid` has exited (a zombie counts)."""
    try:
        return status(pid)["State"].startswith("Z")
    except FileNotFoundError:
        return True


# -- reading live processes -------------------------------------------------

def caps(st):
    return st["CapPrm"], st["CapEff"], st["CapBnd"]


def fd_targets(pid):
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append((int(fd), os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            pass
    return out


def tcp_listen_inodes():
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def socket_kinds(pid):
    """Counts of what the process's fds are: unix sockets, tcp listeners, ..."""
    listen = tcp_listen_inodes()
    unix = {line.split()[6] for line in open("/proc/net/unix").read().splitlines()[1:]}
    kinds = {}
    for fd, target in fd_targets(pid):
        if target.startswith("socket:["):
            inode = target[8:-1]
            kind = "listen" if inode in listen else "unix" if inode in unix else "tcp"
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("anon_inode:"):
            kind = target[len("anon_inode:"):].strip("[]")
        else:
            kind = target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def in_child(fn):
    """Run fn() in a forked process; returns its exit status (0 = all held)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def output_of_child(fn):
    """Run fn() in a forked process; returns the bytes it returned, sent
    back through a pipe (b"" if it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, fn())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data
