"""Where accounts come from: `auth.backend`, tried in order.

Runs in: the auth broker, the only process that sees a password hash.
Each backend answers lookup(login) with a passwd.PasswdEntry or None
(unknown here: ask the next one); the first that knows a login decides,
as Dovecot's passdbs do with their default result rules.

  passwd-file  auth.passwd_file (Dovecot's format), re-read when it changes
  system       the name service (getpwnam: /etc/passwd, or NSS such as
               LDAP or sssd) for uid, gid, home and shell, and the hash from
               /etc/shadow, which the broker reads through auth.shadow_group
  pam          the name service for the ids; the password is checked by
               PAM (pam_authenticate + pam_acct_mgmt) in a hashing worker

An account that exists but may not log in (locked, expired, `nologin`,
a denied shell, an address outside its allow_nets) still costs one full
verification and gets the answer a wrong password gets: only the log
says why (refusal()).
"""
import errno
import ipaddress
import os
import pwd
import time
from collections import Counter

from popd import limits
from popd.broker import passwd
from popd.unix.logsetup import log

SHADOW = "/etc/shadow"


class PasswdSource:
    """The passwd file, re-read when it changes (so an edit takes effect
    without a restart).  A bad line refuses that line only; a file that
    cannot be read at all keeps the previous version serving, and
    `problem` says what is wrong with it."""

    name = "passwd-file"

    def __init__(self, path, allow_weak=False):
        self.path, self.allow_weak = path, allow_weak
        self.stamp = None
        self.entries = {}
        self.problem = None

    def refresh(self):
        try:
            st = os.stat(self.path)
        except OSError as e:
            self.problem = f"cannot stat {self.path} as uid {os.getuid()}: {e.strerror}"
            if self.stamp is not None:         # at start the broker says it, once
                log.error("%s; keeping the previous version of the file", self.problem)
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return False
        try:
            data = passwd.read_passwd_file(self.path)
        except passwd.PasswdError as e:
            self.problem = str(e)
            if e.problem == os.strerror(errno.EACCES):
                self.problem += (f" as uid {os.getuid()}; make it readable by "
                                 f"broker_group: chgrp {os.getgid()} {self.path} && "
                                 f"chmod 0640 {self.path}")
            if self.stamp is not None:
                log.error("%s; keeping the previous version of the file", e)
            return False
        self.entries, refused, notes = passwd.read_entries(data, self.path, self.allow_weak)
        for problem in refused:
            log.warning("%s; that line is refused", problem)
        for note in notes:
            log.info("%s", note)
        self.stamp, self.problem = stamp, None
        return True

    def lookup(self, login):
        return self.entries.get(login)

    def known_hashes(self):
        return self.entries.values()


def _days(field):
    return int(field) if field.isdigit() else -1


def shadow_refusal(fields, today):
    """Why a shadow(5) entry may not log in today, or None.  `fields` are
    the nine colon-separated fields.  Follows pam_unix: a password past
    its maximum age needs changing, which POP3 cannot do."""
    hashed = fields[1]
    lastchg, maximum, inactive, expire = (_days(fields[i]) for i in (2, 4, 6, 7))
    if not hashed:
        return "no password set"
    if hashed.startswith("!"):
        return "account locked"
    if hashed.startswith("*"):
        return "password login disabled"
    if expire >= 0 and today >= expire:
        return "account expired"
    if lastchg == 0:
        return "password must be changed"
    if maximum >= 0 and lastchg > 0:
        if inactive >= 0 and today - lastchg > maximum + inactive:
            return "password expired and inactive"
        if today - lastchg > maximum:
            return "password expired"
    return None


class ShadowFile:
    """/etc/shadow, read again when it changes: login -> nine fields."""

    def __init__(self, path=SHADOW):
        self.path = path
        self.stamp = None
        self.fields = {}

    def refresh(self):
        try:
            st = os.stat(self.path)
            if (st.st_ino, st.st_mtime_ns, st.st_size) == self.stamp:
                return False
            with open(self.path, "rb") as f:
                data = f.read(limits.PASSWD_FILE_MAX)
        except OSError as e:
            log.error("cannot read %s as uid %d (groups %s): %s; is the broker's "
                      "auth.shadow_group the file's group?", self.path, os.getuid(),
                      os.getgroups(), e.strerror)
            return False
        fields = {}
        for raw in data.split(b"\n"):
            parts = raw.decode("utf-8", "replace").split(":")
            if len(parts) == 9 and passwd.valid_login(parts[0]):
                fields.setdefault(parts[0], parts)
        self.fields, self.stamp = fields, (st.st_ino, st.st_mtime_ns, st.st_size)
        return True


class SystemAccounts:
    """getpwnam for the account, /etc/shadow for its hash."""

    name = "system"

    def __init__(self, allow_weak=False, shadow=None):
        self.shadow = shadow or ShadowFile()
        self.allow_weak = allow_weak
        self.problem = None

    def refresh(self):
        changed = self.shadow.refresh()
        self.problem = None if self.shadow.stamp else f"cannot read {self.shadow.path}"
        return changed

    def lookup(self, login):
        account = _getpwnam(login)
        if account is None:
            return None
        fields = self.shadow.fields.get(login)
        if fields is None:
            return _entry(account, "", self.name, "no entry in /etc/shadow")
        refused = shadow_refusal(fields, int(time.time() // 86400))
        if not refused:
            try:
                passwd.scheme_of(fields[1], self.allow_weak)
            except ValueError as e:
                refused = f"its hash in {self.shadow.path}: {e}"
        # A refused entry is verified against a dummy: no hash of a locked
        # account is ever checked.
        return _entry(account, "" if refused else fields[1], self.name, refused)

    def known_hashes(self):
        return (passwd.PasswdEntry(login, f[1], 0, 0, "")
                for login, f in self.shadow.fields.items() if f[1].startswith("$"))


class PamAccounts:
    """getpwnam for the account; the password goes to PAM in a worker."""

    name = "pam"
    problem = None

    def refresh(self):
        return False

    def lookup(self, login):
        account = _getpwnam(login)
        return None if account is None else _entry(account, "", self.name, None)

    def known_hashes(self):
        return ()


def _getpwnam(login):
    try:
        return pwd.getpwnam(login)
    except (KeyError, OSError):
        return None


def _entry(account, hashed, source, refused):
    return passwd.PasswdEntry(account.pw_name, hashed, account.pw_uid, account.pw_gid,
                              account.pw_dir, account.pw_shell, refused, source=source)


class Accounts:
    """The configured backends, in order."""

    def __init__(self, auth):
        makers = {"passwd-file": lambda: PasswdSource(auth.passwd_file,
                                                      auth.allow_weak_schemes),
                  "system": lambda: SystemAccounts(auth.allow_weak_schemes),
                  "pam": PamAccounts}
        self.backends = [makers[name]() for name in auth.backend]

    def refresh(self):
        """Re-read what changed; True if any hash did (dummies follow)."""
        return any([b.refresh() for b in self.backends])

    def problems(self):
        return [b.problem for b in self.backends if b.problem]

    def lookup(self, login):
        for backend in self.backends:
            entry = backend.lookup(login)
            if entry is not None:
                return entry
        return None

    def known_hashes(self):
        for backend in self.backends:
            yield from backend.known_hashes()

    def default_scheme(self):
        """The commonest strong scheme known: unknown users are checked
        against a dummy hash of it, so they cost what a wrong password
        costs."""
        schemes = Counter()
        for entry in self.known_hashes():
            try:
                schemes[passwd.scheme_of(entry.password)] += 1
            except ValueError:
                pass
        # max() rather than most_common(): that one imports heapq lazily,
        # and after the privilege drop imports may fail.
        return max(schemes, key=schemes.__getitem__) if schemes else "SHA512-CRYPT"


def refusal(entry, peer_ip, deny_shells):
    """Why this known account may not log in from `peer_ip`, or None."""
    if entry.refused:
        return entry.refused
    if entry.shell and entry.shell in deny_shells:
        return f"shell {entry.shell} is in auth.deny_shells"
    if entry.allow_nets:
        ip = ipaddress.ip_address(peer_ip)
        if not any(ip.version == net.version and ip in net for net in entry.allow_nets):
            return f"{peer_ip} is outside its allow_nets"
    return None
