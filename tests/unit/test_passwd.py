"""Unit tests for popd.broker.passwd (broker side) and popd.passwd_cli (popd-passwd).

Hashes come from Dovecot itself where we have them (its own test vectors and
`doveadm pw` output), the rest from popd/libpass with cheap costs.  Argon2 is
used sparingly: each argon2 hash or verify costs ~0.1 s.
"""
import base64
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from passlib.context import CryptContext

from popd import limits, passwd_cli
from popd.broker import passwd
from popd.broker.passwd import PasswdEntry, PasswdError, Verifier
from tests.dovecot_hashes import DOVECOT_SHA256, DOVECOT_SHA512

ROOT = Path(__file__).resolve().parents[2]

# Dovecot's src/auth/test-password-scheme.c vectors (password "test").
DOVECOT_BLF = ("{BLF-CRYPT}$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31IL"
               "cRcThQpEiW")
DOVECOT_ARGON2ID = ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdY"
                    "laMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd5GJSEx0ty85Cc")
DOVECOT_ARGON2I = ("{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$f2iuP4aUeNMrgu34fh"
                   "Okkg$1XSZZMWlIs0zmE+snlUIcLADO3GXbA2O/hsQmmc317k")
DOVECOT_CRYPT_BLF = ("{CRYPT}$2y$05$ORqzr0AagWr25v3ixHD5QuMXympIoNTbipEFZz6aAm"
                     "ovGNoij2vDO")
# Dovecot's SSHA512 is base64(sha512(password + salt) + salt), built by hand
# here so the test does not lean on passlib to define the format.
SSHA512 = "{SSHA512}" + base64.b64encode(
    hashlib.sha512(b"ssha-pw" + b"NaCl1234").digest() + b"NaCl1234").decode()

LONG_BLF_PASSWORD = "é" * 36          # exactly 72 UTF-8 bytes
BARE_SHA512 = passwd.make_hash("bare6", "SHA512-CRYPT", rounds=5000)[14:]
BARE_2B = CryptContext(schemes=["bcrypt"], bcrypt__ident="2b",
                       bcrypt__rounds=4).hash("bare2b")
LONG_BLF = passwd.make_hash(LONG_BLF_PASSWORD, "BLF-CRYPT", rounds=4)

PASSWORDS = {
    "blf": "test", "argon2id": "test", "argon2i": "test",
    "sha512": "test123", "sha256": "test123", "crypt": "test123",
    "ssha512": "ssha-pw", "bare6": "bare6", "bare2b": "bare2b",
    "long": LONG_BLF_PASSWORD,
}
PASSWD_FILE = f"""\
# popd test users; Dovecot layout user:password:uid:gid:gecos:home:shell:extra

blf:{DOVECOT_BLF}:1001:1001::/home/blf::
argon2id:{DOVECOT_ARGON2ID}:1002:1002:Ar Gon:/home/argon2id:/bin/false:quota=1G
argon2i:{DOVECOT_ARGON2I}:1003:1003
sha512:{DOVECOT_SHA512}:1004:1004::/home/sha512
sha256:{DOVECOT_SHA256}:1005:1005::::
crypt:{DOVECOT_CRYPT_BLF}:1006:1006::::
ssha512:{SSHA512}:1007:1007::::
bare6:{BARE_SHA512}:1008:1008::::
bare2b:{BARE_2B}:1009:1009::::
long:{LONG_BLF}:1010:1010::::a=b:c
"""


@pytest.fixture(scope="module")
def entries():
    return passwd.parse_passwd(PASSWD_FILE.encode(), "users")


@pytest.fixture(scope="module")
def verifier(entries):
    v = Verifier(default_scheme="SHA512-CRYPT")
    v.warm_up(entries.values())
    return v


def parse_error(text: str) -> str:
    with pytest.raises(PasswdError) as info:
        passwd.parse_passwd(text.encode("utf-8", "surrogateescape"), "pw")
    return str(info.value)


# --- parsing ---------------------------------------------------------------

def test_parses_dovecot_layout(entries):
    assert sorted(entries) == sorted(PASSWORDS)
    assert entries["blf"] == PasswdEntry("blf", DOVECOT_BLF, 1001, 1001,
                                         "/home/blf")
    assert entries["argon2id"].home == "/home/argon2id"
    assert entries["argon2i"] == PasswdEntry("argon2i", DOVECOT_ARGON2I,
                                             1003, 1003, "")
    assert entries["long"].uid == 1010


def test_schemes_of_entries(entries):
    assert {k: passwd.scheme_of(e.password) for k, e in entries.items()} == {
        "blf": "BLF-CRYPT", "argon2id": "ARGON2ID", "argon2i": "ARGON2I",
        "sha512": "SHA512-CRYPT", "sha256": "SHA256-CRYPT",
        "crypt": "BLF-CRYPT", "ssha512": "SSHA512", "bare6": "SHA512-CRYPT",
        "bare2b": "BLF-CRYPT", "long": "BLF-CRYPT"}


@pytest.mark.parametrize("stored", [
    "{PLAIN}test", "{plain}test", "{CLEAR}test", "{CRAM-MD5}e02d374f",
    "{MD5}$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/", "$1$GgvxyNz8$OjZhLh4P.gF1lx",
    "{CRYPT}//EsnG9FLTKjo", "//EsnG9FLTKjo", "{SHA1}qUqP5cyxm6YcTAhz05Hph5g=",
    "{PBKDF2}$1$bUnT4Pl7yFtYX0KU$5000$50a8",
    "{SHA512-CRYPT}$2y$05$x", "{ARGON2ID}$argon2i$v=19$", "$2x$05$abc",
    "$argon2d$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "{SHA512-CRYPT.B64}JDYk",
    "", "*", "!$6$abc",
])
def test_scheme_of_refuses(stored):
    with pytest.raises(ValueError):
        passwd.scheme_of(stored)


def test_scheme_of_is_case_insensitive_like_dovecot():
    assert passwd.scheme_of("{sha512-crypt}$6$x") == "SHA512-CRYPT"
    assert passwd.scheme_of("{crypt}$2y$05$x") == "BLF-CRYPT"


MALFORMED = [
    ("alice", "expected user:password:uid:gid"),
    ("alice:{SHA512-CRYPT}SECRETHASH", "expected user:password:uid:gid"),
    (".alice:{x}:1:1", "invalid login name"),
    ("a/b:{x}:1:1", "invalid login name"),
    ("a b:{x}:1:1", "invalid login name"),
    (":{x}:1:1", "invalid login name"),
    ("x" * 65 + ":{x}:1:1", "invalid login name"),
    ("alice:{CRAM-MD5}SECRETHASH:1:1", "{CRAM-MD5} cannot be verified"),
    ("alice:{SECRETHASH}:1:1", "unrecognised {SCHEME} prefix"),
    ("alice:$1$SECRETHASH$abc:1:1", "malformed MD5-CRYPT hash"),
    ("alice:$6$SECRETHASH$tooshort:1:1", "malformed SHA512-CRYPT hash"),
    ("alice:{BLF-CRYPT}$2y$05$SECRETHASH:1:1", "malformed BLF-CRYPT hash"),
    ("alice:{SSHA512}SECRETHASH:1:1", "malformed SSHA512 hash"),
    ("alice:{SHA512-CRYPT}$2y$05$SECRETHASH:1:1", "does not start with $6$"),
    (f"alice:{DOVECOT_SHA512}:1000", "expected user:password:uid:gid"),
    (f"alice:{DOVECOT_SHA512}:vmail:vmail", "uid of 'alice' is not a number"),
    (f"alice:{DOVECOT_SHA512}::1000", "uid of 'alice' is not a number"),
    (f"alice:{DOVECOT_SHA512}:1000:-1", "gid of 'alice' is not a number"),
    (f"alice:{DOVECOT_SHA512}:4294967295:1", "uid of 'alice' is not a number"),
    (f"alice:{DOVECOT_SHA512}:+5:1", "uid of 'alice' is not a number"),
    (f"alice:{DOVECOT_SHA512}:1\r", "control character"),
    ("alice:{SHA512-CRYPT}SECRET\udcffHASH:1:1", "not valid UTF-8"),
    ("alice:" + "SECRETHASH" * 410 + ":1:1", "longer than 4096 bytes"),
]


@pytest.mark.parametrize("line, problem", MALFORMED)
def test_malformed_line_names_line_and_not_hash(line, problem):
    message = parse_error(f"# users\n\n{line}\n")
    assert message.startswith("pw, line 3: ")
    assert problem in message
    assert "SECRET" not in message and "MViNQUSbWyXWL9wZ" not in message
    assert "\n" not in message


def test_duplicate_user():
    text = (f"bob:{DOVECOT_SHA512}:1:1\n#\n"
            f"alice:{DOVECOT_SHA512}:1:1\nalice:{DOVECOT_BLF}:1:1\n")
    message = parse_error(text)
    assert message.startswith("pw, line 4: duplicate user 'alice'")
    assert "first on line 3" in message


def test_uid_gid_bounds():
    top = passwd.parse_passwd(
        f"a:{DOVECOT_SHA512}:4294967294:0".encode(), "pw")["a"]
    assert (top.uid, top.gid) == (2**32 - 2, 0)


def test_load_file_errors(tmp_path, monkeypatch):
    with pytest.raises(PasswdError, match="No such file"):
        passwd.load_passwd_file(str(tmp_path / "missing"))
    with pytest.raises(PasswdError, match="not a regular file"):
        passwd.load_passwd_file(str(tmp_path))
    os.mkfifo(tmp_path / "fifo")        # must not block the broker
    with pytest.raises(PasswdError, match="not a regular file"):
        passwd.load_passwd_file(str(tmp_path / "fifo"))
    big = tmp_path / "big"
    big.write_text("# padding\n" * 10)
    monkeypatch.setattr(limits, "PASSWD_FILE_MAX", 64)
    with pytest.raises(PasswdError, match="larger than 64 bytes"):
        passwd.load_passwd_file(str(big))


def test_load_file_reads_what_parse_reads(tmp_path, entries):
    path = tmp_path / "users"
    path.write_text(PASSWD_FILE)
    assert passwd.load_passwd_file(str(path)) == entries


@pytest.mark.parametrize("name, ok", [
    ("alice", True), ("alice@example.org", True), ("jürgen", True),
    ("a" * 64, True), ("a" * 65, False), ("", False), (".alice", False),
    ("al/ice", False), ("al:ice", False), ("al\0ice", False),
    ("al ice", False), ("al\tice", False), ("alice\n", False),
    ("al\u200bice", False), ("al\u00a0ice", False), ("..", False),
])
def test_valid_login(name, ok):
    assert passwd.valid_login(name) is ok


# --- verifying -------------------------------------------------------------

@pytest.mark.parametrize("login", sorted(PASSWORDS))
def test_verify_right_and_wrong(verifier, entries, login):
    right = PASSWORDS[login].encode()
    assert verifier.verify(entries[login], right) is True
    # A prefix, not a suffix: "long" only counts its first 72 bytes.
    assert verifier.verify(entries[login], b"x" + right) is False


class Spy:
    """Records which backend verifies what (the real ones still answer)."""

    def __init__(self, ctx):
        self.ctx, self.calls = ctx, []

    def verify(self, secret, stored):          # stands in for the CryptContext
        self.calls.append(("libpass", secret, stored))
        return self.ctx.verify(secret, stored)

    def libcrypt_verify(self, secret, stored, real=passwd.libcrypt.verify):
        self.calls.append(("libcrypt", secret, stored))
        return real(secret, stored)


@pytest.fixture
def spy(verifier, monkeypatch):
    spy = Spy(verifier._ctx)
    monkeypatch.setattr(verifier, "_ctx", spy)
    monkeypatch.setattr(passwd.libcrypt, "verify", spy.libcrypt_verify)
    return spy


def test_unknown_user_costs_one_dummy_verify(verifier, spy):
    assert verifier.verify(None, b"test123") is False
    [(backend, secret, stored)] = spy.calls
    assert secret == b"test123"
    # The dummy copies the file's SHA512-CRYPT cost (Dovecot's implicit 5000
    # rounds) and takes the same C path, so unknown users cost what known
    # ones do.
    assert backend == "libcrypt"
    assert stored.startswith("$6$") and "rounds=" not in stored
    assert stored != passwd._verify_form(DOVECOT_SHA512, "SHA512-CRYPT")
    spy.calls.clear()
    assert verifier.verify(verifier.dummy_entry(), b"test123") is False
    # Past libxcrypt's 511 bytes, libpass; for a known user too (below).
    assert verifier.verify(None, b"x" * 600) is False
    assert [c[0] for c in spy.calls] == ["libcrypt", "libpass"]


def test_wrong_password_takes_the_dummys_path(verifier, entries, spy):
    assert verifier.verify(entries["sha512"], b"wrong") is False
    assert verifier.verify(entries["sha512"], b"x" * 600) is False
    assert [c[0] for c in spy.calls] == ["libcrypt", "libpass"]


@pytest.mark.parametrize("login", ["blf", "sha512"])
@pytest.mark.parametrize("secret", [b"\xfftest", b"te\0st", b"\xc3"])
def test_unusable_secret_still_costs_a_verify(verifier, entries, spy, login,
                                              secret):
    scheme = passwd.scheme_of(entries[login].password)
    assert verifier.verify(entries[login], secret) is False
    [(backend, sent, stored)] = spy.calls
    assert (backend, stored) == (passwd.backend(scheme),
                                 verifier._dummies[scheme])
    # The dummy copies the cost of the file's hashes.
    assert stored.startswith({"blf": "$2y$05$", "sha512": "$6$"}[login])
    assert "rounds=" not in stored and stored not in DOVECOT_BLF
    # Nothing with a NUL reaches crypt: ctypes would cut the string there.
    assert b"\0" not in sent and len(sent) == len(secret)


def test_bcrypt_uses_first_72_bytes_like_dovecot(verifier, entries):
    entry = entries["long"]
    secret = LONG_BLF_PASSWORD.encode()
    assert len(secret) == 72
    # crypt_blowfish ignores what follows byte 72; bcrypt 5 would raise.
    assert verifier.verify(entry, secret + b"anything at all") is True
    assert verifier.verify(entry, secret + "é".encode() * 50) is True
    assert verifier.verify(entry, secret[:-1]) is False


def test_broken_entry_is_a_miss(verifier):
    bad = PasswdEntry("x", "$6$abc$garbage", 1, 1, "")
    assert verifier.verify(bad, b"test") is False
    refused = PasswdEntry("x", "{PLAIN}test", 1, 1, "")
    assert verifier.verify(refused, b"test") is False


def test_verify_needs_warm_up():
    with pytest.raises(RuntimeError):
        Verifier(default_scheme="BLF-CRYPT").verify(None, b"x")
    with pytest.raises(ValueError):
        Verifier(default_scheme="PLAIN")


def test_no_module_loads_after_warm_up(tmp_path):
    """After the privilege drop imports may fail (the broker's files are
    root's): every
    broker-side operation must work with only what warm_up() loaded."""
    users = tmp_path / "users"
    users.write_text(PASSWD_FILE)
    script = f"""
import sys
from popd.broker import passwd
v = passwd.Verifier("SHA512-CRYPT")
v.warm_up()
before = set(sys.modules)
entries = passwd.load_passwd_file({str(users)!r})
v.warm_up(entries.values())
for e in entries.values():
    v.verify(e, b"wrong")
v.verify(entries["argon2id"], b"test")
v.verify(None, b"\\xff")
for scheme, rounds in (("SHA512-CRYPT", 1000), ("BLF-CRYPT", 4),
                      ("ARGON2ID", 1)):
    passwd.make_hash("pw", scheme, rounds)
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# --- making hashes ---------------------------------------------------------

def test_make_hash_formats(verifier):
    sha = passwd.make_hash("pw", "SHA512-CRYPT")
    assert sha.startswith("{SHA512-CRYPT}$6$rounds=100000$")
    blf = passwd.make_hash("pw", "BLF-CRYPT")
    assert blf.startswith("{BLF-CRYPT}$2y$10$")
    argon = passwd.make_hash("pw", "ARGON2ID")
    assert argon.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    for stored in (sha, blf, argon):
        entry = PasswdEntry("u", stored, 1, 1, "")
        assert verifier.verify(entry, b"pw") is True
    # 5000 is crypt's implicit count: written without "rounds=", as Dovecot.
    assert "rounds=" not in passwd.make_hash("pw", "SHA512-CRYPT", 5000)


@pytest.mark.parametrize("password, scheme, rounds", [
    ("x" * 73, "BLF-CRYPT", 4), ("é" * 37, "BLF-CRYPT", 4),
    ("", "SHA512-CRYPT", 5000), ("a\0b", "SHA512-CRYPT", 5000),
    ("a\nb", "SHA512-CRYPT", 5000), ("pw", "SSHA512", None),
    ("pw", "PLAIN", None), ("pw", "SHA512-CRYPT", 999),
    ("pw", "BLF-CRYPT", 32), ("pw", "ARGON2ID", 0),
])
def test_make_hash_refuses(password, scheme, rounds):
    with pytest.raises(ValueError):
        passwd.make_hash(password, scheme, rounds)


def test_format_entry_is_dovecot_layout(verifier):
    line = passwd.format_entry("alice", DOVECOT_SHA512, 1000, 100,
                               "/home/alice")
    assert line == f"alice:{DOVECOT_SHA512}:1000:100::/home/alice::"
    assert passwd.parse_passwd(line.encode(), "pw")["alice"] == PasswdEntry(
        "alice", DOVECOT_SHA512, 1000, 100, "/home/alice")
    for bad in [("../x", DOVECOT_SHA512, 1, 1, ""),
                ("a", "{PLAIN}x", 1, 1, ""),
                ("a", DOVECOT_SHA512, 2**32 - 1, 1, ""),
                ("a", DOVECOT_SHA512, 1, -1, ""),
                ("a", DOVECOT_SHA512, 1, 1, "/x:y"),
                ("a", DOVECOT_SHA512, 1, 1, "/x\ny")]:
        with pytest.raises(ValueError):
            passwd.format_entry(*bad)


# --- popd-passwd -----------------------------------------------------------

def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "popd.passwd_cli", *args],
                          cwd=ROOT, input=stdin, capture_output=True,
                          text=True)


def cli(monkeypatch, capsys, *args, stdin=b""):
    """main() in this process, password on stdin (faster than a process)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = passwd_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


CHEAP = ("--scheme", "SHA512-CRYPT", "--rounds", "1000", "--stdin")


def test_cli_prints_default_argon2id_entry(verifier):
    done = run_cli("--stdin", "--uid", "1000", "--gid", "1000",
                   "--home", "/home/alice", "alice", stdin="s3cret pw \n")
    assert done.returncode == 0 and done.stderr == ""
    line = done.stdout.rstrip("\n")
    assert "\n" not in line
    login, stored, *rest = line.split(":")
    assert login == "alice"
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert rest == ["1000", "1000", "", "/home/alice", "", ""]
    entry = passwd.parse_passwd(line.encode(), "out")["alice"]
    # Only the newline is stripped: trailing spaces are password.
    assert verifier.verify(entry, b"s3cret pw ") is True


def test_cli_append_creates_0640_and_refuses_duplicates(tmp_path,
                                                         monkeypatch, capsys):
    path = tmp_path / "users"
    old_umask = os.umask(0o077)
    try:
        code, out, err = cli(monkeypatch, capsys, *CHEAP, "--uid", "5",
                             "--gid", "6", "--append", str(path), "alice",
                             stdin=b"one\n")
    finally:
        os.umask(old_umask)
    assert (code, out, err) == (0, "", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    before = path.read_bytes()
    code, out, err = cli(monkeypatch, capsys, *CHEAP, "--uid", "5", "--gid",
                         "6", "--append", str(path), "alice", stdin=b"two\n")
    assert code == 2
    assert err == f"popd-passwd: alice is already in {path}\n"
    assert path.read_bytes() == before
    code, *_ = cli(monkeypatch, capsys, "--scheme", "blf-crypt", "--rounds",
                   "4", "--stdin", "--uid", "7", "--gid", "7", "--append",
                   str(path), "bob", stdin=b"two\n")
    assert code == 0
    entries = passwd.load_passwd_file(str(path))
    assert sorted(entries) == ["alice", "bob"]
    assert passwd.scheme_of(entries["bob"].password) == "BLF-CRYPT"


def test_cli_append_keeps_mode_and_completes_last_line(tmp_path, monkeypatch,
                                                       capsys):
    path = tmp_path / "users"
    path.write_text(f"# no newline at the end\nold:{DOVECOT_SHA512}:1:1")
    path.chmod(0o600)
    code, *_ = cli(monkeypatch, capsys, *CHEAP, "--uid", "5", "--gid", "5",
                   "--append", str(path), "new", stdin=b"pw\n")
    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(passwd.load_passwd_file(str(path))) == ["new", "old"]


def test_cli_append_refuses_symlink_and_broken_file(tmp_path, monkeypatch,
                                                    capsys):
    real = tmp_path / "real"
    real.write_text(f"old:{DOVECOT_SHA512}:1:1\n")
    (tmp_path / "link").symlink_to(real)
    code, _, err = cli(monkeypatch, capsys, *CHEAP, "--uid", "5", "--gid",
                       "5", "--append", str(tmp_path / "link"), "new",
                       stdin=b"pw\n")
    assert code == 2 and "symbolic link" in err
    broken = tmp_path / "broken"
    broken.write_text("old:{CRAM-MD5}secret:1:1\n")
    code, _, err = cli(monkeypatch, capsys, *CHEAP, "--uid", "5", "--gid",
                       "5", "--append", str(broken), "new", stdin=b"pw\n")
    assert code == 2
    assert err.startswith(f"popd-passwd: {broken}, line 1: ")
    assert "secret" not in err
    assert broken.read_text() == "old:{CRAM-MD5}secret:1:1\n"
    assert real.read_text() == f"old:{DOVECOT_SHA512}:1:1\n"


def test_cli_verify_exit_codes(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"sha512:{DOVECOT_SHA512}:1:1\n")
    ok = run_cli("verify", "--stdin", "--file", str(path), "sha512",
                 stdin="test123\n")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    wrong = run_cli("verify", "--stdin", "--file", str(path), "sha512",
                    stdin="nope\n")
    unknown = run_cli("verify", "--stdin", "--file", str(path), "nobody",
                      stdin="test123\n")
    for done in (wrong, unknown):
        assert done.returncode == 1
        assert done.stderr == "popd-passwd: password does not match\n"
    missing = run_cli("verify", "--stdin", "--file", str(tmp_path / "no"),
                      "sha512", stdin="test123\n")
    assert missing.returncode == 2
    assert missing.stderr.startswith("popd-passwd: ")
    assert missing.stderr.count("\n") == 1


@pytest.mark.parametrize("args, stdin, message", [
    ((), b"", "the following arguments are required"),
    (("--uid", "x", "--gid", "1", "a"), b"", "argument --uid"),
    (("--uid", "4294967295", "--gid", "1", "a"), b"", "argument --uid"),
    (("--scheme", "PLAIN", "--uid", "1", "--gid", "1", "a"), b"",
     "argument --scheme"),
    (CHEAP + ("--uid", "1", "--gid", "1", ".a"), b"pw\n",
     "invalid login name"),
    (CHEAP + ("--uid", "1", "--gid", "1", "a"), b"\n", "empty password"),
    (CHEAP + ("--uid", "1", "--gid", "1", "a"), b"\xff\n", "not valid UTF-8"),
    (CHEAP + ("--uid", "1", "--gid", "1", "--home", "rel", "a"), b"pw\n",
     "absolute path"),
    (("--scheme", "BLF-CRYPT", "--stdin", "--uid", "1", "--gid", "1", "a"),
     b"x" * 73 + b"\n", "first 72 bytes"),
    (("verify", "--stdin", "a"), b"", "the following arguments are required"),
])
def test_cli_usage_errors_are_one_line(monkeypatch, capsys, args, stdin,
                                       message):
    code, out, err = cli(monkeypatch, capsys, *args, stdin=stdin)
    assert code == 2 and out == ""
    assert err.startswith("popd-passwd: ") and err.count("\n") == 1
    assert message in err


def test_cli_terminal_password_must_match_twice(monkeypatch, capsys):
    answers = iter(["first", "second"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    code, out, err = cli(monkeypatch, capsys, "--uid", "1", "--gid", "1", "a")
    assert (code, out) == (2, "")
    assert err == "popd-passwd: passwords do not match\n"


def test_cli_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    def interrupted(prompt):
        raise KeyboardInterrupt
    monkeypatch.setattr("getpass.getpass", interrupted)
    assert cli(monkeypatch, capsys, "--uid", "1", "--gid", "1", "a") == (
        130, "", "")
