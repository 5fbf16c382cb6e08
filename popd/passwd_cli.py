"""popd-passwd: make, change, delete, list and check entries of popd's
Dovecot passwd-file.

Runs as the administrator's command (usually root), never inside the daemon:

    popd-passwd [--scheme SCHEME] [--rounds N] [--stdin] --uid N --gid N
                [--home DIR] [--append FILE] LOGIN
    popd-passwd passwd [--scheme SCHEME] [--rounds N] [--stdin]
                --file FILE LOGIN
    popd-passwd delete --file FILE LOGIN
    popd-passwd list --file FILE
    popd-passwd verify [--stdin] --file FILE LOGIN
    popd-passwd --version

A subcommand is the first word only, so the original form (no subcommand)
keeps working unchanged; a login that is also a subcommand's name goes after
the options there, as the README writes it anyway.

`--append` adds a line in place (O_APPEND, under an flock).  `passwd` and
`delete` rewrite the file: a new file beside it with the old one's owner,
group and mode, fsync'd, renamed over it, so the broker (which re-reads the
file when its inode, mtime or size changes) sees the old file or the new
one, never half of either.
Every writer takes the flock and re-checks that the path still names the
file it locked: a rename made while it waited would otherwise leave it
writing to a file nobody reads any more.

Exit codes: 0 done (or password matches), 1 password does not match or
login not in the file, 2 usage or file error, 130 interrupted, 141 output
pipe closed (list).
"""
import argparse
import errno
import fcntl
import getpass
import os
import stat
import sys
import tempfile

from popd import __version__, limits
from popd.broker import passwd
from popd.limits import MAX_SECRET

PROG = "popd-passwd"
# ARGON2ID is what Dovecot's `doveadm pw` writes today, so the file stays
# Dovecot's, and it is memory-hard: a GPU gains little over the server.  The
# price is ~140 ms and 64 MiB in the broker per verify.
DEFAULT_SCHEME = "ARGON2ID"
# Readable by the broker's group, nobody else; an existing file keeps its mode.
NEW_FILE_MODE = 0o640
# Each retry means another popd-passwd replaced the file while we waited for
# its lock; more than a few in a row is a loop that rewrites it, not a race.
LOCK_ATTEMPTS = 10


class UsageError(Exception):
    """Something the user fixes: one line on stderr, exit 2."""


class NotFound(Exception):
    """The login is not in the file: one line on stderr, exit 1."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus an error and exits; we want one line.
    def error(self, message):
        raise UsageError(message)


def _id(text):
    if not text.isascii() or not text.isdigit() or int(text) > passwd.MAX_ID:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to {passwd.MAX_ID}")
    return int(text)


def _parser(name, description, epilog=""):
    p = _Parser(prog=f"{PROG} {name}".strip(), description=description,
                epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version",
                   version=f"{PROG} {__version__}",
                   help="print the version of popd-passwd and exit")
    return p


def _add_hash_options(p, default, default_text):
    p.add_argument("--scheme", type=str.upper, choices=passwd.WRITABLE,
                   default=default, metavar="SCHEME",
                   help=", ".join(passwd.WRITABLE[:-1]) + " or "
                   f"{passwd.WRITABLE[-1]} ({default_text})")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="cost: sha-crypt rounds, "
                   "bcrypt log2 cost or argon2 passes (default: the "
                   "scheme's own)")
    p.add_argument("--stdin", action="store_true",
                   help="read the password as one line from stdin instead "
                   "of twice from the terminal")


def _add_file_options(p, login=True):
    p.add_argument("--file", required=True,
                   help="the passwd-file, e.g. /etc/popd/passwd")
    if login:
        p.add_argument("login", metavar="LOGIN", help="the user's login name")


_OTHER_FORMS = f"""\
other forms (each has --help):
  {PROG} passwd [--scheme SCHEME] [--rounds N] [--stdin] --file FILE LOGIN
  {PROG} delete --file FILE LOGIN
  {PROG} list --file FILE
  {PROG} verify [--stdin] --file FILE LOGIN"""


def _make_parser():
    p = _parser("", "Print (or append) a passwd-file entry for a new user.",
                _OTHER_FORMS)
    _add_hash_options(p, DEFAULT_SCHEME, f"default: {DEFAULT_SCHEME}")
    p.add_argument("--uid", type=_id, required=True, metavar="N",
                   help="the uid the user's session runs as")
    p.add_argument("--gid", type=_id, required=True, metavar="N",
                   help="the gid the user's session runs as")
    p.add_argument("--home", default="", metavar="DIR",
                   help="home directory (absolute; default: none)")
    p.add_argument("--append", metavar="FILE",
                   help="append the entry to FILE (created with mode 0640 "
                   "if missing) instead of printing it")
    p.add_argument("login", metavar="LOGIN", help="the new user's login name")
    return p


def _passwd_parser():
    p = _parser("passwd", "Change the password of a user in a passwd-file;"
                "\nevery other byte of the file stays as it is.")
    _add_hash_options(p, None, "default: the user's current scheme if "
                      f"popd-passwd writes it, else {DEFAULT_SCHEME}")
    _add_file_options(p)
    return p


def _delete_parser():
    p = _parser("delete", "Remove a user's line from a passwd-file; every "
                "other byte\nof the file stays as it is.")
    _add_file_options(p)
    return p


def _list_parser():
    p = _parser("list", "Print one line per user of a passwd-file: login, "
                "uid, gid and\nhash scheme, separated by spaces (never the "
                "hash).")
    _add_file_options(p, login=False)
    return p


def _verify_parser():
    p = _parser("verify", "Exit 0 if the password matches, 1 if not.")
    p.add_argument("--stdin", action="store_true",
                   help="read the password as one line from stdin instead "
                   "of from the terminal")
    _add_file_options(p)
    return p


def _read_password(from_stdin, confirm):
    if from_stdin:
        line = sys.stdin.buffer.readline(MAX_SECRET + 2)
        # Only the newline goes: spaces may be part of a password.
        if line.endswith(b"\n"):
            line = line[:-1]
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("password is not valid UTF-8") from None
    else:
        try:
            password = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Retype password: ") != password:
                raise UsageError("passwords do not match")
        except EOFError:
            raise UsageError("no password given") from None
    if not password:
        raise UsageError("empty password")
    if len(password.encode()) > MAX_SECRET:
        # The broker never accepts a longer one from a client.
        raise UsageError(f"password longer than {MAX_SECRET} bytes")
    return password


def _symlink_error(path):
    return UsageError(f"{path} is a symbolic link; give the real file")


def _open_file(path, create):
    flags = (os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
             # A FIFO or a device planted at the path must not hang us.
             | os.O_NONBLOCK)
    if create:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        except FileExistsError:
            pass
        else:
            os.fchmod(fd, NEW_FILE_MODE)    # whatever the umask took away
            return fd
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _symlink_error(path) from None
        raise


def _open_locked(path, create):
    """An fd of the regular file at `path`, holding its exclusive flock, and
    still the file at `path` once the lock is ours (see the module doc)."""
    for _ in range(LOCK_ATTEMPTS):
        fd = _open_file(path, create)
        try:
            locked = os.fstat(fd)
            if not stat.S_ISREG(locked.st_mode):
                raise UsageError(f"{path} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (locked.st_dev,
                                                            locked.st_ino):
            return fd
        # Replaced (or removed) while we waited: lock whatever is there now.
        os.close(fd)
    raise UsageError(f"{path} keeps being replaced; try again")


def _read_locked(fd, path):
    with open(fd, "rb", closefd=False) as f:
        data = f.read(limits.PASSWD_FILE_MAX + 1)
    if len(data) > limits.PASSWD_FILE_MAX:
        raise UsageError(f"{path} is larger than {limits.PASSWD_FILE_MAX} bytes")
    return data


def _append(path, login, line):
    """Append `line` to `path` unless `login` is there, under the flock so
    two popd-passwd runs cannot add the same user."""
    fd = _open_locked(path, create=True)
    try:
        data = _read_locked(fd, path)
        if login in passwd.parse_passwd(data, path):
            raise UsageError(f"{login} is already in {path}")
        text = ("\n" if data and not data.endswith(b"\n") else "") + line
        record = (text + "\n").encode()
        try:
            if os.write(fd, record) != len(record):
                raise OSError(errno.ENOSPC, "short write", path)
            os.fsync(fd)
        except OSError:
            # Leave no half line behind: the broker would refuse the file.
            os.ftruncate(fd, len(data))
            raise
    finally:
        os.close(fd)


def _replace(path, old, data):
    """Put `data` at `path` atomically, owned and moded like `old` was."""
    directory = os.path.dirname(path) or "."
    try:
        # mkstemp: O_EXCL, mode 0600, a name nobody can have planted.
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                   suffix=".popd-passwd", dir=directory)
    except OSError as e:
        raise OSError(e.errno, e.strerror, directory) from None
    try:
        try:
            # Owner first: chown clears set-id bits that chmod then restores.
            # Both happen before a single hash is written.
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:
            raise UsageError(f"{path}: cannot give the new file owner "
                             f"{old.st_uid}:{old.st_gid}; run as root") \
                from None
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    # The rename itself survives a crash only once the directory is synced.
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _not_found(login, path):
    return NotFound(f"{login} is not in {path}")


def _change_entry(path, login, change):
    """Rewrite `path` with the line of `login` replaced by change(line), or
    removed if that is None; every other byte stays as it was."""
    fd = _open_locked(path, create=False)
    try:
        old = os.fstat(fd)
        if old.st_nlink != 1:
            # A rename would split the names: the others keep the old entry.
            raise UsageError(f"{path} has {old.st_nlink} hard links; "
                             "rewriting it would leave the other names "
                             "unchanged")
        data = _read_locked(fd, path)
        # Every line must be good: a rewrite must not drop one.
        before = passwd.parse_passwd(data, path)
        if login not in before:
            raise _not_found(login, path)
        lines = data.split(b"\n")
        # parse_passwd found exactly one such line; comments never count.
        key = login.encode() + b":"
        found = [n for n, raw in enumerate(lines)
                 if raw.startswith(key) and not raw.startswith(b"#")]
        if len(found) != 1:
            raise RuntimeError("entry line not found")
        i = found[0]
        new = change(lines[i])
        lines[i:i + 1] = [] if new is None else [new]
        result = b"\n".join(lines)
        # Checked before anything is written: the same users (less one for
        # delete) with the same ids and homes.
        after = passwd.parse_passwd(result, path)
        kept = {n: (e.uid, e.gid, e.home) for n, e in before.items()
                if new is not None or n != login}
        if {n: (e.uid, e.gid, e.home) for n, e in after.items()} != kept:
            raise RuntimeError("rewrite check failed")
        _replace(path, old, result)
    finally:
        os.close(fd)    # the lock goes only after the rename


def _existing_entry(path, login):
    """The entry of `login`, checked before asking for a password (and
    again under the lock by _change_entry)."""
    if not passwd.valid_login(login):
        raise UsageError("invalid login name")
    if os.path.islink(path):
        raise _symlink_error(path)
    entry = passwd.load_passwd_file(path).get(login)
    if entry is None:
        raise _not_found(login, path)
    return entry


def _make(args):
    if not passwd.valid_login(args.login):
        raise UsageError("invalid login name")
    if args.home and not args.home.startswith("/"):
        raise UsageError("--home must be an absolute path")
    # Refuse a duplicate before asking for the password; _append checks
    # again under the lock.
    if args.append and os.path.lexists(args.append) and \
            args.login in passwd.load_passwd_file(args.append):
        raise UsageError(f"{args.login} is already in {args.append}")
    password = _read_password(args.stdin, confirm=True)
    stored = passwd.make_hash(password, args.scheme, args.rounds)
    line = passwd.format_entry(args.login, stored, args.uid, args.gid,
                               args.home)
    if args.append:
        _append(args.append, args.login, line)
    else:
        print(line)
    return 0


def _passwd(args):
    entry = _existing_entry(args.file, args.login)
    scheme = args.scheme
    if scheme is None:
        # A file of one scheme keeps it: a user whose hash costs less or
        # more than the rest can be told apart by timing (passwd.Verifier).
        current = passwd.scheme_of(entry.password, entry.weak)
        scheme = current if current in passwd.WRITABLE else DEFAULT_SCHEME
    password = _read_password(args.stdin, confirm=True)
    stored = passwd.make_hash(password, scheme, args.rounds)
    if ":" in stored or not stored.isprintable():
        raise RuntimeError("unexpected character in a new hash")

    def change(line):
        # login:password:rest; rest (uid, gid, gecos, home, shell, extra
        # fields) stays byte for byte.
        login, _, tail = line.partition(b":")
        rest = tail.partition(b":")[2]
        return login + b":" + stored.encode() + b":" + rest

    _change_entry(args.file, args.login, change)
    return 0


def _delete(args):
    _existing_entry(args.file, args.login)
    _change_entry(args.file, args.login, lambda line: None)
    return 0


def _list(args):
    # Space-separated, no header: logins hold no spaces, so `read` and awk
    # split it; `column -t` aligns it.
    for entry in passwd.load_passwd_file(args.file).values():
        print(entry.login, entry.uid, entry.gid,
              passwd.scheme_of(entry.password, entry.weak))
    sys.stdout.flush()      # a closed pipe shows here, not at exit
    return 0


def _verify(args):
    if not passwd.valid_login(args.login):
        raise UsageError("invalid login name")
    entries = passwd.load_passwd_file(args.file)
    password = _read_password(args.stdin, confirm=False)
    entry = entries.get(args.login)
    scheme = passwd.scheme_of(entry.password, entry.weak) if entry else DEFAULT_SCHEME
    verifier = passwd.Verifier(default_scheme=scheme)
    # One scheme is enough here: this process checks one password.
    verifier.warm_up(entries.values(), schemes=[scheme])
    if verifier.verify(entry, password.encode()):
        return 0
    # The same words whether or not the user exists.
    print(f"{PROG}: password does not match", file=sys.stderr)
    return 1


# The first word picks one; anything else is the original form (_make).
SUBCOMMANDS = {
    "passwd": (_passwd_parser, _passwd),
    "delete": (_delete_parser, _delete),
    "list": (_list_parser, _list),
    "verify": (_verify_parser, _verify),
}


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        parser, run = SUBCOMMANDS.get(args[0] if args else "",
                                      (None, None))
        if parser is not None:
            return run(parser().parse_args(args[1:]))
        return _make(_make_parser().parse_args(args))
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:         # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except BrokenPipeError:
        # `popd-passwd list | head`: the reader has what it wanted.  Point
        # stdout at /dev/null so the flush at exit cannot complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NotFound as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except (UsageError, passwd.PasswdError, ValueError) as e:
        message = str(e)
    except OSError as e:
        message = (f"{e.filename}: {e.strerror}" if e.filename
                   else e.strerror or str(e))
    except Exception as e:
        # A bug, but still one line; never str(e), which might quote the
        # password.
        message = f"internal error ({type(e).__name__})"
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
