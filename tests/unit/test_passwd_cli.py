"""popd-passwd's file-changing commands (passwd, delete, list), --version and
--help, run as the real tool: `python -m popd.passwd_cli` in a subprocess
against temp files.  (test_passwd.py has the entry-making and verify tests.)

Rewrites must leave every other byte of the file alone and keep its owner
and mode: as root (CI) the files get an owner and group nobody has, so a
rewrite that fell back to root:root would show.
"""
import fcntl
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from passlib.context import CryptContext

import popd
from popd import passwd_cli
from popd.broker import passwd

ROOT = Path(__file__).resolve().parents[2]
# Cheap costs: the tests are about the file, not the hashes.
SHA512 = passwd.make_hash("alice pw", "SHA512-CRYPT", rounds=1000)
BLF = passwd.make_hash("bob pw", "BLF-CRYPT", rounds=4)
# Not a scheme popd-passwd writes: `passwd` moves such a user to ARGON2ID.
SHA256 = "{SHA256-CRYPT}" + CryptContext(
    schemes=["sha256_crypt"], sha256_crypt__rounds=1000).hash("carol pw")
DAVE = passwd.make_hash("dave pw", "SHA512-CRYPT", rounds=1000)
OLD_PASSWORDS = {"alice": "alice pw", "bob": "bob pw", "carol": "carol pw",
                 "dave": "dave pw"}
# Comments, a blank line of spaces, gecos, shell, extra fields, a comment
# that looks like an entry, and a last line without a newline: all of it
# must survive a rewrite byte for byte.
USERS = (
    "# popd users: this comment stays exactly as it is  \n"
    f"alice:{SHA512}:1001:1001:Alice A.:/home/alice:/bin/false:quota=1G\n"
    "   \n"
    f"bob:{BLF}:1002:1002\n"
    "#bob:{PLAIN}not-a-user:1:1\n"
    f"carol:{SHA256}:1003:1003::/home/carol::\n"
    f"dave:{DAVE}:1004:1004::::").encode()
LISTING = ("alice 1001 1001 SHA512-CRYPT\n"
           "bob 1002 1002 BLF-CRYPT\n"
           "carol 1003 1003 SHA256-CRYPT\n"
           "dave 1004 1004 SHA512-CRYPT\n")
# As root, an owner and group that no account has (see the docstring).
ODD_OWNER = (4242, 4343)
ODD_MODE = 0o604


def run(*args, stdin="", **kwargs):
    return subprocess.run([sys.executable, "-m", "popd.passwd_cli", *args],
                          cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=60, **kwargs)


def assert_error(done, code, message):
    """Exit `code` with exactly one line on stderr: no traceback, no usage
    text, nothing on stdout."""
    assert (done.returncode, done.stdout) == (code, "")
    assert done.stderr == f"popd-passwd: {message}\n"


def users_file(tmp_path, data=USERS):
    """The passwd-file in a directory of its own (so leftovers show), with
    the odd owner and mode when we may set them; returns the path and the
    (uid, gid, mode) a rewrite must keep."""
    path = tmp_path / "etc" / "users"
    path.parent.mkdir()
    path.write_bytes(data)
    if os.geteuid() == 0:
        os.chown(path, *ODD_OWNER)
    path.chmod(ODD_MODE)
    st = path.stat()
    return path, (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def owner_and_mode(path):
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def line_index(data, login):
    lines = data.split(b"\n")
    return lines, next(i for i, line in enumerate(lines)
                       if line.startswith(login.encode() + b":"))


def verifies(path, login, password):
    done = run("verify", "--stdin", "--file", str(path), login,
               stdin=password + "\n")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


# --- passwd ------------------------------------------------------------------

@pytest.mark.parametrize("login, options, scheme, prefix", [
    # Keeps the user's scheme when popd-passwd writes it.
    ("alice", ("--rounds", "1000"), "SHA512-CRYPT", "$6$rounds=1000$"),
    ("bob", ("--rounds", "4"), "BLF-CRYPT", "$2y$04$"),
    # The last line, which has no newline and must not gain one.
    ("dave", ("--rounds", "1000"), "SHA512-CRYPT", "$6$rounds=1000$"),
    # SHA256-CRYPT is read, never written: the default scheme instead.
    ("carol", ("--rounds", "1"), "ARGON2ID", "$argon2id$v=19$m=65536,t=1,"),
    # --scheme chooses, in any case.
    ("alice", ("--scheme", "blf-crypt", "--rounds", "4"), "BLF-CRYPT",
     "$2y$04$"),
])
def test_passwd_changes_only_the_hash(tmp_path, login, options, scheme,
                                      prefix):
    path, kept = users_file(tmp_path)
    inode = path.stat().st_ino
    done = run("passwd", "--stdin", *options, "--file", str(path), login,
               stdin="new pw ü \n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    new = path.read_bytes()
    old_lines, i = line_index(USERS, login)
    new_lines, j = line_index(new, login)
    # Every other line, byte for byte, in the same place.
    assert i == j and new_lines[:i] + new_lines[i + 1:] == \
        old_lines[:i] + old_lines[i + 1:]
    old_fields = old_lines[i].decode().split(":")
    new_fields = new_lines[i].decode().split(":")
    # uid, gid, gecos, home, shell and extra fields as they were.
    assert new_fields[:1] + new_fields[2:] == old_fields[:1] + old_fields[2:]
    assert new_fields[1].startswith("{" + scheme + "}" + prefix)
    assert passwd.scheme_of(new_fields[1]) == scheme
    # A new file renamed into place, owned and moded like the old one, and
    # nothing left beside it.
    assert path.stat().st_ino != inode
    assert owner_and_mode(path) == kept
    assert os.listdir(path.parent) == ["users"]
    # Only the newline was stripped from the password.
    assert verifies(path, login, "new pw ü ")
    assert not verifies(path, login, OLD_PASSWORDS[login])


def test_passwd_refusals_change_nothing(tmp_path):
    path, kept = users_file(tmp_path)
    before = path.stat()

    def unchanged():
        after = path.stat()
        assert path.read_bytes() == USERS
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino,
                                                     before.st_mtime_ns)
        assert os.listdir(path.parent) == ["users"]

    done = run("passwd", "--stdin", "--file", str(path), "nobody",
               stdin="pw\n")
    assert_error(done, 1, f"nobody is not in {path}")
    unchanged()
    done = run("passwd", "--stdin", "--file", str(path), "bob", stdin="\n")
    assert_error(done, 2, "empty password")
    unchanged()
    # A comment is not an entry, whatever it looks like.
    done = run("passwd", "--stdin", "--file", str(path), "#bob",
               stdin="pw\n")
    assert_error(done, 1, f"#bob is not in {path}")
    unchanged()
    done = run("passwd", "--stdin", "--file", str(path), ".bob",
               stdin="pw\n")
    assert_error(done, 2, "invalid login name")
    unchanged()
    done = run("passwd", "--stdin", "--scheme", "PLAIN", "--file", str(path),
               "bob", stdin="pw\n")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "argument --scheme" in done.stderr
    unchanged()


# --- delete ------------------------------------------------------------------

@pytest.mark.parametrize("login", ["alice", "bob", "dave"])
def test_delete_removes_only_that_line(tmp_path, login):
    path, kept = users_file(tmp_path)
    done = run("delete", "--file", str(path), login)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    lines, i = line_index(USERS, login)
    # The line goes with its newline (for the last line, the one before
    # it): everything else stays.
    assert path.read_bytes() == b"\n".join(lines[:i] + lines[i + 1:])
    assert owner_and_mode(path) == kept
    assert os.listdir(path.parent) == ["users"]
    listing = run("list", "--file", str(path))
    assert listing.stdout == "".join(
        line + "\n" for line in LISTING.splitlines()
        if not line.startswith(login + " "))


def test_delete_of_the_only_user_leaves_an_empty_file(tmp_path):
    path, kept = users_file(tmp_path, f"bob:{BLF}:1:1\n".encode())
    assert run("delete", "--file", str(path), "bob").returncode == 0
    assert path.read_bytes() == b""
    assert owner_and_mode(path) == kept


def test_delete_of_a_missing_user_is_one_line_and_exit_1(tmp_path):
    path, _ = users_file(tmp_path)
    inode = path.stat().st_ino
    assert_error(run("delete", "--file", str(path), "nobody"), 1,
                 f"nobody is not in {path}")
    assert path.read_bytes() == USERS and path.stat().st_ino == inode
    assert_error(run("delete", "--file", str(path)), 2,
                 "the following arguments are required: LOGIN")


# --- refusals shared by passwd and delete ------------------------------------

@pytest.mark.parametrize("command, stdin", [
    (("passwd", "--stdin", "--rounds", "4"), "pw\n"),
    (("delete",), ""),
])
def test_rewrites_refuse_links_and_broken_files(tmp_path, command, stdin):
    path, _ = users_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(path)
    assert_error(run(*command, "--file", str(link), "bob", stdin=stdin), 2,
                 f"{link} is a symbolic link; give the real file")
    # A rename would give the other name the old entries for ever.
    hard = tmp_path / "hard"
    os.link(path, hard)
    assert_error(run(*command, "--file", str(path), "bob", stdin=stdin), 2,
                 f"{path} has 2 hard links; rewriting it would leave the "
                 "other names unchanged")
    hard.unlink()
    assert path.read_bytes() == USERS
    # A line the tool cannot read would be dropped: refused, and the error
    # names the line, never its hash.
    broken = tmp_path / "broken"
    damaged = "eve:{SHA512-CRYPT}$6$rounds=1000$salty$short:1:1\n"
    broken.write_bytes(USERS.replace(b"   \n", damaged.encode()))
    done = run(*command, "--file", str(broken), "bob", stdin=stdin)
    assert_error(done, 2, f"{broken}, line 3: password of 'eve': malformed "
                 "SHA512-CRYPT hash")
    missing = tmp_path / "missing"
    done = run(*command, "--file", str(missing), "bob", stdin=stdin)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"popd-passwd: {missing}: ")
    assert done.stderr.count("\n") == 1 and not missing.exists()


# --- concurrent writers ------------------------------------------------------

def wait_blocked_on_flock(proc):
    """Until /proc/locks shows `proc` waiting for an flock ("->" lines are
    the waiters)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1:3] == ["->", "FLOCK"] and fields[5] == str(proc.pid):
                return
        time.sleep(0.02)
    raise AssertionError("popd-passwd never waited for the lock")


@pytest.mark.parametrize("command, users", [
    # --append, in place: must append to the file that replaced the one it
    # waited for, not to the unlinked one.
    (("--scheme", "SHA512-CRYPT", "--rounds", "1000", "--stdin", "--uid",
      "1005", "--gid", "1005", "--append"), ["alice", "frank", "erin"]),
    # A rewrite: must start from the new file, or frank is lost.
    (("delete", "--file"), ["frank"]),
])
def test_writers_wait_for_the_lock_and_follow_a_rename(tmp_path, command,
                                                       users):
    path, _ = users_file(tmp_path, f"alice:{SHA512}:1001:1001\n".encode())
    password = tmp_path / "password"
    password.write_text("erin pw\n")
    login = "erin" if "--append" in command else "alice"
    with open(path, "rb") as held, open(password) as stdin:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [sys.executable, "-m", "popd.passwd_cli", *command, str(path),
             login], cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            wait_blocked_on_flock(proc)
            # What another popd-passwd's rewrite does while we hold the lock.
            new = path.with_name("users.new")
            new.write_bytes(path.read_bytes() +
                            f"frank:{DAVE}:1006:1006\n".encode())
            os.rename(new, path)
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, "", "")
    assert list(passwd.load_passwd_file(str(path))) == users


# --- list --------------------------------------------------------------------

def test_list_prints_login_ids_and_scheme_never_the_hash(tmp_path):
    path, _ = users_file(tmp_path)
    done = run("list", "--file", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, LISTING, "")
    for stored in (SHA512, BLF, SHA256, DAVE):
        assert stored.partition("}")[2][:8] not in done.stdout
    assert "$" not in done.stdout and "{" not in done.stdout
    path.write_bytes(b"# nobody yet\n")
    assert run("list", "--file", str(path)).stdout == ""


def test_list_errors_are_one_line(tmp_path):
    done = run("list", "--file", str(tmp_path / "missing"))
    assert_error(done, 2, f"{tmp_path / 'missing'}: No such file or directory")
    broken = tmp_path / "broken"
    broken.write_text(f"eve:{SHA512[:-5]}:1:1\n")
    done = run("list", "--file", str(broken))
    assert_error(done, 2, f"{broken}, line 1: password of 'eve': malformed "
                 "SHA512-CRYPT hash")
    assert_error(run("list", "--file", str(broken), "eve"), 2,
                 "unrecognized arguments: eve")


# --- the original form, --version, --help ------------------------------------

def test_readme_form_still_works(tmp_path):
    """The README's line, exactly; the password from the terminal.  Without
    a controlling terminal (a new session) getpass reads stdin instead."""
    path = tmp_path / "passwd"
    done = run("--uid", "1001", "--gid", "1001", "--append", str(path),
               "alice", stdin="alice pw\nalice pw\n", start_new_session=True)
    assert (done.returncode, done.stdout) == (0, "")
    assert "Traceback" not in done.stderr
    entry = passwd.load_passwd_file(str(path))["alice"]
    assert (entry.uid, entry.gid, passwd.scheme_of(entry.password)) == (
        1001, 1001, "ARGON2ID")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert verifies(path, "alice", "alice pw")


@pytest.mark.parametrize("command", [(), ("passwd",), ("delete",), ("list",),
                                     ("verify",)])
def test_version(command):
    done = run(*command, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"popd-passwd {popd.__version__}\n", "")


def test_every_option_and_subcommand_has_help():
    parsers = [passwd_cli._make_parser()] + [
        make() for make, _ in passwd_cli.SUBCOMMANDS.values()]
    for parser in parsers:
        assert parser.description, parser.prog
        for action in parser._actions:
            assert action.help, (parser.prog, action.dest)
    top = run("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage: popd-passwd")
    for name in passwd_cli.SUBCOMMANDS:
        assert f"popd-passwd {name} " in top.stdout
        done = run(name, "--help")
        assert done.returncode == 0 and done.stderr == ""
        assert done.stdout.startswith(f"usage: popd-passwd {name} ")


def test_passwd_rehashes_a_weak_entry_that_popd_warned_about(tmp_path):
    """The broker's warning for a weak login says: re-hash it with
    popd-passwd.  So the tool reads such a file, lists the scheme, and
    `passwd` replaces the weak hash with a strong one."""
    path = tmp_path / "passwd"
    path.write_text(f"old:{{PLAIN}}plain pw:1001:1001::/home/old::\nalice:{SHA512}:1002:1002\n")
    listed = run("list", "--file", str(path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == "old 1001 1001 PLAIN"
    done = run("passwd", "--stdin", "--scheme", "SHA512-CRYPT", "--rounds", "1000",
               "--file", str(path), "old", stdin="new strong pw\n")
    assert done.returncode == 0, done.stderr
    entry = passwd.parse_passwd(path.read_bytes(), "pw")["old"]
    assert entry.weak is False and passwd.scheme_of(entry.password) == "SHA512-CRYPT"
    assert path.read_text().splitlines()[1] == f"alice:{SHA512}:1002:1002"
