"""popd-passwd: make and check entries of popd's Dovecot passwd-file.

Runs as the administrator's command (usually root), never inside the daemon:

    popd-passwd [--scheme S] [--rounds N] [--stdin] --uid N --gid N
                [--home DIR] [--append FILE] LOGIN
    popd-passwd verify [--stdin] --file FILE LOGIN

Exit codes: 0 done (or password matches), 1 password does not match,
2 usage or file error, 130 interrupted.
"""
import argparse
import errno
import fcntl
import getpass
import os
import stat
import sys

from . import passwd
from .limits import MAX_SECRET

PROG = "popd-passwd"
# ARGON2ID is what Dovecot's `doveadm pw` writes today, so the file stays
# Dovecot's, and it is memory-hard: a GPU gains little over the server.  The
# price is ~140 ms and 64 MiB in the broker per verify.
DEFAULT_SCHEME = "ARGON2ID"
# Readable by the broker's group, nobody else; an existing file keeps its mode.
NEW_FILE_MODE = 0o640


class UsageError(Exception):
    """Something the user fixes: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus an error and exits; we want one line.
    def error(self, message):
        raise UsageError(message)


def _id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > passwd.MAX_ID:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to {passwd.MAX_ID}")
    return int(text)


def _make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Print (or append) a passwd-file "
                "entry; 'popd-passwd verify --help' checks a password.")
    p.add_argument("--scheme", type=str.upper, choices=passwd.WRITABLE,
                   default=DEFAULT_SCHEME)
    p.add_argument("--rounds", type=int, help="cost: sha-crypt rounds, "
                   "bcrypt log2 cost or argon2 passes")
    p.add_argument("--stdin", action="store_true",
                   help="read the password as one line from stdin")
    p.add_argument("--uid", type=_id, required=True)
    p.add_argument("--gid", type=_id, required=True)
    p.add_argument("--home", default="")
    p.add_argument("--append", metavar="FILE",
                   help="append the entry to FILE instead of printing it")
    p.add_argument("login", metavar="LOGIN")
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} verify",
                description="Exit 0 if the password matches, 1 if not.")
    p.add_argument("--stdin", action="store_true",
                   help="read the password as one line from stdin")
    p.add_argument("--file", required=True)
    p.add_argument("login", metavar="LOGIN")
    return p


def _read_password(from_stdin: bool, confirm: bool) -> str:
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


def _append(path: str, login: str, line: str) -> None:
    """Append `line` to `path` unless `login` is there, under an flock so
    two popd-passwd runs cannot add the same user."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        os.fchmod(fd, NEW_FILE_MODE)    # whatever the umask took away
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"{path} is a symbolic link; give the "
                                 "real file") from None
            raise
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = f.read(passwd.MAX_FILE_SIZE + 1)
        if len(data) > passwd.MAX_FILE_SIZE:
            raise UsageError(f"{path} is larger than "
                             f"{passwd.MAX_FILE_SIZE} bytes")
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


def _make(args: argparse.Namespace) -> int:
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


def _verify(args: argparse.Namespace) -> int:
    if not passwd.valid_login(args.login):
        raise UsageError("invalid login name")
    entries = passwd.load_passwd_file(args.file)
    password = _read_password(args.stdin, confirm=False)
    entry = entries.get(args.login)
    scheme = passwd.scheme_of(entry.password) if entry else DEFAULT_SCHEME
    verifier = passwd.Verifier(default_scheme=scheme)
    # One scheme is enough here: this process checks one password.
    verifier.warm_up(entries.values(), schemes=[scheme])
    if verifier.verify(entry, password.encode()):
        return 0
    # The same words whether or not the user exists.
    print(f"{PROG}: password does not match", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args[:1] == ["verify"]:
            return _verify(_verify_parser().parse_args(args[1:]))
        return _make(_make_parser().parse_args(args))
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:         # --help
        return e.code if isinstance(e.code, int) else 0
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
