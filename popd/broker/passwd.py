"""Dovecot passwd-file parsing, password verification and hashing.

Runs in the auth broker (the only popd process that reads hashes) and in the
`popd-passwd` tool.  The broker must call `Verifier.warm_up()` while it still
has its start-up privileges: after the drop the interpreter's own files may be
unreadable (Python lives in a 0700 directory on our machines), so any module
that libpass would load lazily at the first verify must already be loaded.

SHA512-CRYPT and SHA256-CRYPT are verified by the system's libcrypt (see
libcrypt.py: C speed, loaded at import); every other scheme, and those two
wherever libcrypt failed its self-test, by libpass; yescrypt (what Debian
writes in /etc/shadow) by libcrypt only.  Dovecot's legacy schemes are in
weak_hashes.py and pass only with `auth.allow_weak_schemes`.

A bad line in a passwd file refuses that line only (read_entries reports
it with its line number); popd-passwd, which rewrites files, still wants
every line good (parse_passwd), weak ones included.
"""
import ipaddress
import os
import re
import secrets
import stat
from collections import Counter
from typing import NamedTuple

from passlib.context import CryptContext

from popd import mailpath
from popd.broker import libcrypt, weak_hashes
from popd import limits
from popd.limits import MAX_LOGIN

# The longest hash we accept is well under 200 characters; 4 KiB leaves room
# for a home directory and extra fields.
MAX_LINE = 4096
# uid_t is 32 bits and (uid_t)-1 means "unchanged" to setresuid().
MAX_ID = 2**32 - 2
# bcrypt only ever reads 72 bytes of the password (crypt_blowfish, which
# Dovecot uses, silently ignores the rest; bcrypt 5 raises instead).
BCRYPT_MAX_BYTES = 72


class _Scheme(NamedTuple):
    handler: str | None       # passlib's name for it; None: libcrypt only
    idents: tuple[str, ...]   # crypt(3) prefixes of the stored hash


# The schemes popd verifies.  Everything else is refused on purpose: DES crypt
# reads only 8 characters and MD5-crypt, plain digests and salted digests are
# cheap enough on a GPU that a leaked file (a backup, a stolen disk) gives up
# most passwords in days; PLAIN, CRAM-MD5 and friends store the password or an
# equivalent of it; Dovecot's own {PBKDF2} layout has no passlib reader.  A
# site with such hashes re-hashes with popd-passwd.
SCHEMES = {
    "SHA512-CRYPT": _Scheme("sha512_crypt", ("$6$",)),
    "SHA256-CRYPT": _Scheme("sha256_crypt", ("$5$",)),
    "BLF-CRYPT": _Scheme("bcrypt", ("$2a$", "$2b$", "$2y$")),
    "ARGON2ID": _Scheme("argon2", ("$argon2id$",)),
    "ARGON2I": _Scheme("argon2", ("$argon2i$",)),
    # Dovecot's {SSHA512} body is bare base64; passlib wants the prefix too.
    "SSHA512": _Scheme("ldap_salted_sha512", ()),
    # libxcrypt's; libpass has no reader for them.
    "YESCRYPT": _Scheme(None, ("$y$",)),
    "GOST-YESCRYPT": _Scheme(None, ("$gy$",)),
}
# What popd-passwd writes (see passwd_cli for the default).
WRITABLE = ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT")

# Cost settings for new hashes, and for dummy hashes when the file has no
# hash of that scheme to copy its cost from.
_DEFAULT_SETTINGS = {
    # Dovecot's 5000 rounds cost an attacker ~1 ms per guess; 100000 rounds
    # cost the broker ~18 ms per login through libcrypt (~38 ms in libpass).
    "SHA512-CRYPT": {"rounds": 100_000},
    "SHA256-CRYPT": {"rounds": 100_000},
    # $2y$ is what Dovecot writes; crypt_blowfish reads $2y$ and $2b$ alike.
    "BLF-CRYPT": {"ident": "2y", "rounds": 10},
    # doveadm pw's defaults: our hashes look like the ones Dovecot writes.
    "ARGON2ID": {"type": "id", "memory_cost": 65536, "rounds": 3,
                 "parallelism": 1},
    "ARGON2I": {"type": "i", "memory_cost": 32768, "rounds": 4,
                "parallelism": 1},
    "SSHA512": {},
    # libxcrypt's default cost, as Debian's passwd(1) writes it.
    "YESCRYPT": {"params": "j9T"},
    "GOST-YESCRYPT": {"params": "j9T"},
}

_CONTEXT = CryptContext(schemes=sorted({s.handler for s in SCHEMES.values()
                                        if s.handler}))
# Verified by libcrypt.py rather than libpass: ~2x faster per login.  Hashes
# are still made and parsed by libpass, which also takes over per scheme if
# libcrypt is missing or wrong on this machine.
_LIBCRYPT = frozenset(name for name in ("SHA512-CRYPT", "SHA256-CRYPT", "YESCRYPT",
                                       "GOST-YESCRYPT")
                      if SCHEMES[name].idents[0] in libcrypt.WORKING)
# $y$<params>$<salt>$<43-character hash>, in crypt's base64 alphabet.
_YESCRYPT = re.compile(r"\$g?y\$([./0-9A-Za-z]+)\$([./0-9A-Za-z]*)\$[./0-9A-Za-z]{43}")

# Dovecot scheme names are letters, digits, '-' and '.'.
_PREFIX = re.compile(r"\{([A-Za-z0-9.-]{1,32})\}")
# Dovecot schemes popd never verifies: they store the password or an
# equivalent (CRAM-MD5, SCRAM, NTLM...), or have no reader here (PBKDF2).
# Only these names and the weak ones, never an unknown "{...}" (which
# might be a password in braces), appear in errors.
_REFUSED = frozenset((
    "PLAIN-TRUNC", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
    "LANMAN", "NTLM", "RPA", "OTP", "SKEY", "PLAIN-MD4", "PBKDF2"))
# Dovecot's {MD5} is MD5-crypt.
_ALIASES = {"MD5": "MD5-CRYPT"}
_DECIMAL = re.compile(r"[0-9]{1,10}")
_DES = re.compile(r"[./0-9A-Za-z]{13}")


def valid_login(name):
    """True for a login name popd accepts anywhere (file, client, CLI).

    Names become path components of the mailbox and the state directory,
    and appear in logs: no '/', no leading '.', nothing invisible.
    """
    return (0 < len(name) <= MAX_LOGIN and not name.startswith(".")
            and not any(c in "/:\0" or c.isspace() or not c.isprintable()
                        for c in name))


def backend(scheme):
    """What verifies `scheme` in this process: "libcrypt" or "libpass"."""
    return "libcrypt" if scheme in _LIBCRYPT else "libpass"


class PasswdEntry(NamedTuple):
    """One account, from a passwd file or the system's accounts."""
    login: str
    password: str      # the stored hash exactly as in the file
    uid: int
    gid: int
    home: str
    shell: str = ""
    # Why this account may not log in even with the right password (a
    # Dovecot `nologin` field, a locked or expired shadow entry), or None.
    refused: str | None = None
    allow_nets: tuple = ()             # ip_network objects; () = anywhere
    mail: str | None = None            # an mbox path template of its own
    weak: bool = False                 # a legacy scheme, allowed by config
    source: str = "passwd-file"        # the backend that knows it (accounts.py)


class PasswdError(Exception):
    """A passwd-file problem: one line naming the file and line, no hash."""

    def __init__(self, path, lineno, problem):
        self.path, self.lineno, self.problem = path, lineno, problem
        where = path if lineno is None else f"{path}, line {lineno}"
        super().__init__(f"{where}: {problem}")


def _crypt_scheme(body):
    """Scheme of a crypt(3)-style hash ({CRYPT} or no prefix)."""
    for name, scheme in SCHEMES.items():
        if body.startswith(scheme.idents):
            return name
    if body.startswith("$1$"):
        return "MD5-CRYPT"
    if _DES.fullmatch(body):
        return "DES-CRYPT"
    if body.startswith(("!", "*")):
        raise ValueError("locked or disabled account (the hash starts with "
                         f"{body[0]!r})")
    raise ValueError("unrecognised hash format")


def _split(stored):
    """(scheme, body, encoding) of a stored password, weak schemes
    included; ValueError for what popd never verifies."""
    m = _PREFIX.match(stored)
    if m is None:
        if stored.startswith("{"):
            raise ValueError("unrecognised {SCHEME} prefix")
        if not stored:
            raise ValueError("empty password field")
        return _crypt_scheme(stored), stored, None
    body = stored[m.end():]
    name, encoding = weak_hashes.split_name(m.group(1))
    name = _ALIASES.get(name, name)
    if name == "CRYPT":
        return _crypt_scheme(body), body, None
    if name in weak_hashes.SCHEMES:
        return name, body, encoding
    if name in _REFUSED:
        raise ValueError(f"scheme {{{name}}} cannot be verified: re-hash "
                         "with popd-passwd")
    if name not in SCHEMES or "." in m.group(1):
        raise ValueError("unrecognised {SCHEME} prefix")
    if SCHEMES[name].idents and not body.startswith(SCHEMES[name].idents):
        raise ValueError(f"{{{name}}} hash does not start with "
                         + " or ".join(SCHEMES[name].idents))
    return name, body, None


def is_weak(scheme):
    return scheme in weak_hashes.SCHEMES


def scheme_of(stored, allow_weak=False):
    """Canonical scheme name of a stored password, or ValueError (for a
    weak scheme too unless `allow_weak`)."""
    scheme = _split(stored)[0]
    if is_weak(scheme) and not allow_weak:
        raise ValueError(f"scheme {scheme} is weak: re-hash with popd-passwd "
                         f"(or set auth.allow_weak_schemes: true for now)")
    if scheme in ("YESCRYPT", "GOST-YESCRYPT") and scheme not in _LIBCRYPT:
        raise ValueError(f"{scheme} cannot be verified here: the system's "
                         f"libcrypt does not support it")
    return scheme


def _verify_form(stored, scheme):
    """The string passlib verifies: no Dovecot prefix, except for SSHA512."""
    m = _PREFIX.match(stored)
    body = stored[m.end():] if m else stored
    return "{SSHA512}" + body if scheme == "SSHA512" else body


def _settings_of(stored, scheme):
    """The cost settings of a stored hash (so a dummy can cost the same)."""
    if is_weak(scheme):
        weak_hashes.check_form(scheme, *_split(stored)[1:])
        return {}
    if SCHEMES[scheme].handler is None:
        m = _YESCRYPT.fullmatch(_verify_form(stored, scheme))
        if m is None:
            raise ValueError("malformed")
        return {"params": m.group(1)}
    parsed = _CONTEXT.handler(SCHEMES[scheme].handler).from_string(
        _verify_form(stored, scheme))
    if scheme.startswith("ARGON2"):
        return {"type": parsed.type, "memory_cost": parsed.memory_cost,
                "rounds": parsed.rounds, "parallelism": parsed.parallelism}
    if scheme == "BLF-CRYPT":
        return {"ident": parsed.ident.strip("$"), "rounds": parsed.rounds}
    if scheme == "SSHA512":
        return {}
    return {"rounds": parsed.rounds}


def _hash(password, scheme, settings):
    """Hash in passlib's form, through a CryptContext (never a handler method:
    libpass's lazy backend loader breaks bound handler methods); yescrypt
    through libcrypt, with a fresh salt and the given parameters."""
    if SCHEMES[scheme].handler is None:
        ident = SCHEMES[scheme].idents[0]
        fresh = libcrypt.gensalt(ident.encode())
        if fresh is None:
            raise ValueError(f"{scheme} is not supported by this libcrypt")
        salt = fresh.decode().rsplit("$", 1)[1]
        secret = password if isinstance(password, bytes) else password.encode()
        made = libcrypt.crypt(secret, f"{ident}{settings['params']}${salt}".encode())
        if made is None:
            raise ValueError(f"{scheme} parameters {settings['params']!r} refused")
        return made.decode()
    handler = SCHEMES[scheme].handler
    ctx = CryptContext(schemes=[handler],
                       **{f"{handler}__{k}": v for k, v in settings.items()})
    return ctx.hash(password)


# Dovecot extra fields popd acts on; any other is reported and ignored.
_HONOURED = ("nologin", "reason", "allow_nets", "userdb_home", "userdb_mail")


def _extra_fields(text, login):
    """Dovecot's space-separated `key=value` (or bare `key`) fields: what
    popd honours, and the names it ignores."""
    fields, ignored = {}, []
    for item in text.split():
        key, _, value = item.partition("=")
        key = key.lower()
        if key in _HONOURED:
            fields[key] = value
        else:
            ignored.append(key)
    return fields, ignored


def _allow_nets(value):
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in value.split(",") if n)
    except ValueError:
        raise ValueError(f"allow_nets={value!r} is not a comma-separated list "
                         f"of addresses or networks") from None


def _userdb_mail(value):
    """The mbox file a Dovecot mail location names (INBOX=), or None when it
    names none (the template applies); ValueError for another format."""
    kind, _, rest = value.partition(":")
    if kind.lower() != "mbox":
        raise ValueError(f"userdb_mail={value!r}: popd serves mbox only")
    for part in rest.split(":")[1:]:
        if part.upper().startswith("INBOX="):
            mailpath.check_template(part[6:], shared=False)
            return part[6:]
    return None


def read_entries(data, path, allow_weak=False):
    """Parse the bytes of a Dovecot passwd-file; `path` names it in errors.
    Returns (entries, refused lines, notes): a bad line is refused alone,
    and an extra field popd ignores is one note with its line number."""
    entries = {}
    first_seen = {}
    refused = []
    notes = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            entry = _parse_line(raw, lineno, path, allow_weak, notes)
        except PasswdError as e:
            refused.append(e)
            continue
        if entry is None:
            continue
        if entry.login in entries:
            refused.append(PasswdError(path, lineno, f"duplicate user {entry.login!r} "
                                       f"(first on line {first_seen[entry.login]}); "
                                       f"the first one counts"))
            continue
        entries[entry.login] = entry
        first_seen[entry.login] = lineno
    return entries, refused, notes


def _parse_line(raw, lineno, path, allow_weak, notes):
    def fail(problem):
        return PasswdError(path, lineno, problem)

    if len(raw) > MAX_LINE:
        raise fail(f"line longer than {MAX_LINE} bytes")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not valid UTF-8") from None
    if not line.strip(" ") or line.startswith("#"):
        return None
    if any(not c.isprintable() for c in line):
        raise fail("control character in line (DOS line endings?)")
    # user:password:uid:gid:gecos:home:shell:extra_fields
    fields = line.split(":", 7)
    if len(fields) < 4:
        raise fail("expected user:password:uid:gid[:gecos:home:...]")
    login, password, uid, gid = fields[:4]
    if not valid_login(login):
        raise fail("invalid login name (1-64 characters, no '/', ':', "
                   "spaces or control characters, no leading '.')")
    try:
        scheme = scheme_of(password, allow_weak)
    except ValueError as e:
        raise fail(f"password of {login!r}: {e}") from None
    try:
        # Parsed now, a damaged hash stops the line with its number
        # instead of failing every login of that user later.
        _settings_of(password, scheme)
    except ValueError:
        # Never passlib's message: it might quote the hash one day.
        raise fail(f"password of {login!r}: malformed {scheme} hash") from None
    for what, value in (("uid", uid), ("gid", gid)):
        if not _DECIMAL.fullmatch(value) or int(value) > MAX_ID:
            raise fail(f"{what} of {login!r} is not a number "
                       f"from 0 to {MAX_ID}")
    home = fields[5] if len(fields) > 5 else ""
    shell = fields[6] if len(fields) > 6 else ""
    extra, ignored = _extra_fields(fields[7] if len(fields) > 7 else "", login)
    for key in ignored:
        notes.append(f"{path}, line {lineno}: extra field {key!r} of {login!r} "
                     f"is not used by popd; ignored")
    try:
        allow_nets = _allow_nets(extra["allow_nets"]) if "allow_nets" in extra else ()
        mail = _userdb_mail(extra["userdb_mail"]) if "userdb_mail" in extra else None
    except ValueError as e:
        raise fail(f"{login!r}: {e}") from None
    refusal = None
    if "nologin" in extra:
        refusal = "nologin" + (f" ({extra['reason']})" if extra.get("reason") else "")
    return PasswdEntry(login, password, int(uid), int(gid),
                       extra.get("userdb_home") or home, shell, refusal,
                       allow_nets, mail, is_weak(scheme))


def parse_passwd(data, path):
    """Every line good or PasswdError for the first bad one: for tools that
    rewrite the file (popd-passwd), which must not drop a line.  Weak
    schemes are kept (entry.weak), so that they can be re-hashed."""
    entries, refused, _ = read_entries(data, path, allow_weak=True)
    if refused:
        raise refused[0]
    return entries


def read_passwd_file(path):
    """The bytes of a passwd-file; a file that cannot be used is a
    PasswdError (a FIFO, a directory, something huge)."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the broker.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PasswdError(path, None, "not a regular file")
            with open(fd, "rb", closefd=False) as f:
                data = f.read(limits.PASSWD_FILE_MAX + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise PasswdError(path, None, e.strerror or str(e)) from None
    if len(data) > limits.PASSWD_FILE_MAX:
        raise PasswdError(path, None, f"larger than {limits.PASSWD_FILE_MAX} bytes")
    return data


def load_passwd_file(path):
    """Read and parse a passwd-file, every line good; every problem is a
    PasswdError."""
    return parse_passwd(read_passwd_file(path), path)


class Verifier:
    """Checks secrets against entries, spending the same work on a miss.

    An unknown user is checked against a dummy hash of `default_scheme`, so
    that "no such user" takes as long as "wrong password" (for users of that
    scheme; a file that mixes schemes leaks the scheme through timing).
    """

    def __init__(self, default_scheme="SHA512-CRYPT"):
        if default_scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {default_scheme!r}")
        self.default_scheme = default_scheme
        self._ctx = _CONTEXT
        self._dummies = {}

    def warm_up(self, entries=(), schemes=SCHEMES):
        """Load the backends and make the dummy hashes of `schemes`.  The
        broker warms all of them before the privilege drop (a reloaded file
        may bring any scheme), and may call again after a reload.

        Each dummy copies the most common cost settings of that scheme in
        `entries`: a 100000-round dummy next to 5000-round Dovecot hashes
        would tell a guesser which users exist.
        """
        seen = {name: Counter() for name in schemes
                if SCHEMES[name].handler or name in _LIBCRYPT}
        for entry in entries:
            try:
                scheme = scheme_of(entry.password, entry.weak)
            except ValueError:
                continue                   # locked: checked against a dummy
            if scheme in seen:
                settings = _settings_of(entry.password, scheme)
                seen[scheme][tuple(sorted(settings.items()))] += 1
        for scheme, counts in seen.items():
            settings = (dict(max(counts, key=counts.__getitem__)) if counts
                        else _DEFAULT_SETTINGS[scheme])
            password = secrets.token_urlsafe(24)
            dummy = _hash(password, scheme, settings)
            # Verifying loads the verify path too (the one logins take); a
            # failure here (say, argon2 under too small an RLIMIT_AS) must
            # stop the start-up.
            if not self._check(scheme, password.encode(), dummy):
                raise RuntimeError(f"{scheme} self-test failed")
            self._dummies[scheme] = dummy

    def dummy_entry(self):
        """An entry no password matches, hashed like the file's common
        scheme: what the broker's workers check an unknown user against."""
        return PasswdEntry("", self._dummies[self.default_scheme], 0, 0, "")

    def verify(self, entry, secret):
        """True if `secret` is the password of `entry`.  Never raises for a
        bad secret or hash: the caller logs a False."""
        scheme, stored = self.default_scheme, None
        if entry is not None:
            try:
                scheme = scheme_of(entry.password, entry.weak)
                stored = _verify_form(entry.password, scheme)
            except ValueError:
                pass    # not from load_passwd_file: treated as unknown
        if is_weak(scheme):
            body, encoding = _split(entry.password)[1:]
            return weak_hashes.verify(scheme, body, secret, encoding)
        if scheme not in self._dummies:
            raise RuntimeError(f"Verifier.warm_up() has not prepared {scheme}")
        # A secret that is not UTF-8 or holds a NUL can never match (no
        # client can log in with it, and sha-crypt/bcrypt refuse NUL), but it
        # still costs one verify, with NUL replaced to keep the length.
        try:
            usable = "\0" not in secret.decode("utf-8")
        except UnicodeDecodeError:
            usable = False
        if stored is None or not usable:
            self._check(scheme, secret.replace(b"\0", b"\1"),
                        self._dummies[scheme])
            return False
        return self._check(scheme, secret, stored)

    def _check(self, scheme, secret, stored):
        if scheme == "BLF-CRYPT":
            secret = secret[:BCRYPT_MAX_BYTES]
        try:
            # The dummy of an unknown user takes this same branch, so it
            # costs what a wrong password costs.  libxcrypt refuses phrases
            # over 511 bytes, which popd-passwd may have hashed: those go to
            # libpass (slower, but the length is the client's own secret).
            if scheme in _LIBCRYPT and len(secret) <= libcrypt.MAX_PHRASE:
                return libcrypt.verify(secret, stored)
            return self._ctx.verify(secret, stored)
        except Exception:
            # A malformed hash or a backend error (e.g. argon2 out of memory)
            # is a failed login; the caller logs it.
            return False


def make_hash(password, scheme, rounds=None):
    """A new stored password in Dovecot's form, `{SCHEME}hash`.

    `rounds` is the cost: sha-crypt rounds, bcrypt's log2 cost, or argon2's
    time cost (passes over memory).
    """
    if scheme not in WRITABLE:
        raise ValueError(f"cannot write {scheme!r}; use one of "
                         + ", ".join(WRITABLE))
    if not password:
        raise ValueError("empty password")
    if any(c in password for c in "\0\r\n"):
        # A POP3 client cannot send these in PASS; NUL breaks crypt too.
        raise ValueError("password contains NUL, CR or LF")
    if scheme == "BLF-CRYPT" and len(password.encode()) > BCRYPT_MAX_BYTES:
        raise ValueError(f"BLF-CRYPT uses only the first {BCRYPT_MAX_BYTES}"
                         " bytes of a password; choose a shorter one")
    settings = dict(_DEFAULT_SETTINGS[scheme])
    if rounds is not None:
        handler = _CONTEXT.handler(SCHEMES[scheme].handler)
        if not handler.min_rounds <= rounds <= handler.max_rounds:
            raise ValueError(f"{scheme} rounds must be from "
                             f"{handler.min_rounds} to {handler.max_rounds}")
        settings["rounds"] = rounds
    return "{" + scheme + "}" + _hash(password, scheme, settings)


def format_entry(login, stored, uid, gid, home=""):
    """One passwd-file line (no newline) in Dovecot's layout."""
    if not valid_login(login):
        raise ValueError("invalid login name")
    scheme_of(stored)
    for what, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= MAX_ID:
            raise ValueError(f"{what} must be from 0 to {MAX_ID}")
    if ":" in home or any(not c.isprintable() for c in home + stored):
        raise ValueError("home or hash contains ':' or a control character")
    return f"{login}:{stored}:{uid}:{gid}::{home}::"
