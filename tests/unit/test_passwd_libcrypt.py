"""Unit tests for popd.broker.libcrypt: SHA-crypt verified by the system's libcrypt.

The C path must give libpass's answer on every hash libpass accepts, refuse
what it cannot read without raising, and really be in use on this machine
(a silent fall-back to libpass would only show as a slower broker).
Rounds stay at 1000-6000 so the suite stays fast.
"""
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from passlib.context import CryptContext
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from popd.broker import libcrypt, passwd
from popd.broker.passwd import PasswdEntry, Verifier
from tests.dovecot_hashes import DOVECOT_SHA256, DOVECOT_SHA512

ROOT = Path(__file__).resolve().parents[2]
LIBPASS = CryptContext(schemes=["sha256_crypt", "sha512_crypt"])
HANDLERS = {"$5$": sha256_crypt, "$6$": sha512_crypt}
H64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def verifier():
    v = Verifier("SHA512-CRYPT")
    v.warm_up(schemes=("SHA512-CRYPT", "SHA256-CRYPT"))
    return v


def entry(stored: str) -> PasswdEntry:
    return PasswdEntry("u", stored, 1000, 1000, "")


# --- the C path is the one in use --------------------------------------------

def test_c_path_is_used_on_this_machine():
    assert libcrypt.WORKING == {"$5$", "$6$", "$y$", "$gy$", "$1$", "des"}
    assert {s: passwd.backend(s) for s in passwd.SCHEMES} == {
        "SHA512-CRYPT": "libcrypt", "SHA256-CRYPT": "libcrypt",
        "BLF-CRYPT": "libpass", "ARGON2ID": "libpass", "ARGON2I": "libpass",
        "SSHA512": "libpass", "YESCRYPT": "libcrypt", "GOST-YESCRYPT": "libcrypt"}


@pytest.mark.parametrize("prefix", ["$5$", "$6$"])
def test_self_test_values_are_libpass_results(prefix):
    phrase, setting, known = libcrypt._SELF_TEST[prefix]
    rounds, salt = setting.decode().split("$")[2:]
    made = HANDLERS[prefix].using(rounds=int(rounds[7:]), salt=salt).hash(
        phrase.decode())
    assert made.encode() == known


def test_weak_crypt_self_tests_are_libpass_results():
    phrase = libcrypt._SELF_TEST["$1$"][0].decode()
    assert md5_crypt.using(salt="popdlibc").hash(phrase).encode() == libcrypt._SELF_TEST["$1$"][2]
    assert des_crypt.using(salt="po").hash(phrase).encode() == libcrypt._SELF_TEST["des"][2]


def test_yescrypt_round_trip_and_dummy_costs():
    """yescrypt has no second implementation here: a hash made through
    libcrypt verifies, a wrong phrase does not, and a dummy keeps the
    parameters of the hashes it stands for."""
    stored = passwd._hash("right", "YESCRYPT", {"params": "j9T"})
    assert stored.startswith("$y$j9T$")
    v = Verifier("YESCRYPT")
    v.warm_up([entry(passwd._hash("x", "YESCRYPT", {"params": "jC5"}))] * 2,
              schemes=("YESCRYPT",))
    assert v.dummy_entry().password.startswith("$y$jC5$")
    assert v.verify(entry(stored), b"right") is True
    assert v.verify(entry(stored), b"wrong") is False
    assert v.verify(None, b"right") is False


def run_python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          check=True, capture_output=True, text=True)


def test_library_is_loaded_at_import():
    """The broker imports before its privilege drop; nothing loads after."""
    out = run_python("import popd.broker.passwd\n"
                     "maps = open('/proc/self/maps').read()\n"
                     "print('/libcrypt.so.1' in maps)")
    assert out.stdout == "True\n"


def test_without_libcrypt_libpass_answers_silently():
    script = f"""
import ctypes
real = ctypes.CDLL
def cdll(name, *args, **kwargs):
    if "libcrypt" in name:
        raise OSError(name + ": cannot open shared object file")
    return real(name, *args, **kwargs)
ctypes.CDLL = cdll
from popd.broker import libcrypt, passwd
print(sorted(libcrypt.WORKING), passwd.backend("SHA512-CRYPT"),
      passwd.backend("SHA256-CRYPT"))
v = passwd.Verifier("SHA512-CRYPT")
v.warm_up(schemes=("SHA512-CRYPT", "SHA256-CRYPT"))
for stored in ({DOVECOT_SHA512!r}, {DOVECOT_SHA256!r}):
    e = passwd.PasswdEntry("u", stored, 1, 1, "")
    print(v.verify(e, b"test123"), v.verify(e, b"test124"))
"""
    out = run_python(script)
    assert out.stdout.split("\n") == [
        "[] libpass libpass", "True False", "True False", ""]
    assert out.stderr == ""


# --- the same answers as libpass ---------------------------------------------

PASSWORDS = (st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                     max_size=40)
             | st.text(st.characters(blacklist_categories=("Cs",),
                                     blacklist_characters="\0"), max_size=40))


@settings(max_examples=60, deadline=None)
@given(prefix=st.sampled_from(sorted(HANDLERS)), password=PASSWORDS,
       guess=PASSWORDS, salt=st.text(H64, max_size=16),
       rounds=st.integers(1000, 6000))
@example(prefix="$6$", password="pässwörd", guess="passwort", salt="",
         rounds=5000)
def test_c_path_agrees_with_libpass(verifier, prefix, password, guess, salt,
                                    rounds):
    stored = HANDLERS[prefix].using(salt=salt, rounds=rounds).hash(password)
    setting = stored.rsplit("$", 1)[0].encode()
    # The same hash, not only the same verdict.
    assert libcrypt.crypt(password.encode(), setting) == stored.encode()
    scheme = passwd.scheme_of(stored)
    for secret in (password, guess):
        expected = LIBPASS.verify(secret, stored)
        assert libcrypt.verify(secret.encode(), stored) is expected
        assert verifier.verify(entry("{" + scheme + "}" + stored),
                               secret.encode()) is expected


@settings(max_examples=30, deadline=None)
@given(phrase=st.binary(max_size=60).filter(lambda b: b"\0" not in b),
       guess=st.binary(max_size=60).filter(lambda b: b"\0" not in b))
def test_raw_bytes_agree_with_libpass(phrase, guess):
    """Clients may send any bytes; the broker refuses non-UTF-8 before
    crypt, but the C path itself must still read bytes as libpass does."""
    stored = sha512_crypt.using(rounds=1000).hash(phrase)
    for secret in (phrase, guess):
        assert libcrypt.verify(secret, stored) is LIBPASS.verify(secret,
                                                                 stored)


def test_explicit_default_rounds_are_kept():
    # libpass writes Dovecot's default 5000 rounds implicitly; an explicit
    # "rounds=5000$" must survive crypt unchanged or the comparison fails.
    stored = libcrypt.crypt(b"pw", b"$6$rounds=5000$salt").decode()
    assert stored.startswith("$6$rounds=5000$salt$")
    assert LIBPASS.verify("pw", stored)
    assert libcrypt.verify(b"pw", stored)


# Passwords longer than libxcrypt takes (popd-passwd may have hashed one)
# are verified by libpass; the broker takes secrets up to 1024 bytes.
@pytest.mark.parametrize("size", [511, 512, 1024])
def test_long_passwords_still_verify(verifier, size):
    password = "é" * (size // 2) + "x" * (size % 2)
    assert len(password.encode()) == size
    stored = passwd.make_hash(password, "SHA512-CRYPT", rounds=1000)
    assert (libcrypt.crypt(password.encode(), b"$6$salt") is None) == (
        size > libcrypt.MAX_PHRASE)
    assert verifier.verify(entry(stored), password.encode()) is True
    assert verifier.verify(entry(stored), password.encode()[:-1]) is False


# --- known vectors -----------------------------------------------------------

# Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors:
# (password, setting, result).
DREPPER = [
    ("Hello world!", "$5$saltstring",
     "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("Hello world!", "$5$rounds=10000$saltstringsaltstring",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqe"
     "y6IcA"),
    ("This is just a test", "$5$rounds=5000$toolongsaltstring",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRc"
     "vxa5"),
    ("a very much longer text to encrypt.  This one even stretches over more"
     "than one line.", "$5$rounds=1400$anotherlongsaltstring",
     "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP8"
     "4Bnq1"),
    ("we have a short salt string but not a short password",
     "$5$rounds=77777$short",
     "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("a short string", "$5$rounds=123456$asaltof16chars..",
     "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZK"
     "mF/wJvD"),
    ("the minimum number is still observed", "$5$rounds=10$roundstoolow",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972b"
     "IC"),
    ("Hello world!", "$6$saltstring",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI"
     "68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("Hello world!", "$6$rounds=10000$saltstringsaltstring",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbM"
     "CVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("This is just a test", "$6$rounds=5000$toolongsaltstring",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3"
     "glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("a very much longer text to encrypt.  This one even stretches over more"
     "than one line.", "$6$rounds=1400$anotherlongsaltstring",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMx"
     "Q6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("we have a short salt string but not a short password",
     "$6$rounds=77777$short",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1"
     "a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
    ("a short string", "$6$rounds=123456$asaltof16chars..",
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelC"
     "jmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("the minimum number is still observed", "$6$rounds=10$roundstoolow",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLs"
     "PuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]


@pytest.mark.parametrize("password, setting, result", DREPPER)
def test_drepper_vectors(verifier, password, setting, result):
    if "rounds=10$" in setting:
        # The spec clamps rounds=10 to 1000 when hashing; libxcrypt refuses
        # the setting instead (and libpass a stored rounds=10 hash).  The
        # clamped result itself is an ordinary hash and must verify.
        assert libcrypt.crypt(password.encode(), setting.encode()) is None
    else:
        assert libcrypt.crypt(password.encode(),
                              setting.encode()) == result.encode()
    assert libcrypt.verify(password.encode(), result) is True
    assert libcrypt.verify(password.encode() + b"!", result) is False
    assert verifier.verify(entry(result), password.encode()) is True
    assert LIBPASS.verify(password, result)


@pytest.mark.parametrize("rounds", ["10", "999", "0", "1000000000",
                                    "18446744073709551617"])
def test_rounds_out_of_range_never_match(verifier, rounds):
    """Out of the spec's 1000-999999999 the spec clamps; libxcrypt refuses
    (fast: no hashing at all) and libpass refuses the stored hash at load.
    Either way no password matches and nothing raises."""
    for result in (DREPPER[6][2], DREPPER[-1][2]):
        stored = result.replace("rounds=1000$", f"rounds={rounds}$")
        assert libcrypt.crypt(b"x", stored.encode()) is None
        assert not libcrypt.verify(DREPPER[6][0].encode(), stored)
        assert not verifier.verify(entry(stored), DREPPER[6][0].encode())
        with pytest.raises(passwd.PasswdError, match="malformed"):
            passwd.parse_passwd(f"u:{stored}:1:1".encode(), "pw")


# --- malformed hashes --------------------------------------------------------

GOOD = DREPPER[7][2]          # "$6$saltstring$svn8..." for "Hello world!"
MALFORMED_HASHES = [
    "$6$", "$6$$", "$6$saltstring", "$6$saltstring$", GOOD[:-1], GOOD + "x",
    GOOD + "$", GOOD.replace("$6$", "$5$"), GOOD.replace("salt", "sa:t"),
    GOOD.replace("salt", "sa*t"), GOOD.replace("salt", "sa t"),
    GOOD.replace("salt", "sa\nt"), GOOD.replace("salt", "sält"),
    "$6$rounds=$saltstring$" + GOOD[-86:], "$6$rounds=05000$saltstring$",
    "$6$rounds=-5000$saltstring$", "$6$rounds=5e3$saltstring$",
    "$6$rounds=5000", "$6$" + "s" * 5000, "$6$\0", GOOD + "\0junk",
    "*0", "*1", "*", "", "$", "$7$saltstring$" + GOOD[-86:],
]


@pytest.mark.parametrize("stored", MALFORMED_HASHES)
def test_malformed_hash_is_a_miss(verifier, stored):
    assert libcrypt.verify(b"Hello world!", stored) is False
    assert verifier.verify(entry(stored), b"Hello world!") is False
    assert verifier.verify(entry("{CRYPT}" + stored), b"Hello world!") is False


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["$5$", "$6$"]), rest=st.text(max_size=120))
def test_random_hash_never_raises(prefix, rest):
    assert libcrypt.verify(b"pw", prefix + rest) is False


@pytest.mark.parametrize("phrase", [b"Hello world!\0", b"Hello world!\0junk",
                                    b"\0"])
def test_nul_never_reaches_crypt(phrase):
    # ctypes would end the phrase at the NUL and match "Hello world!".
    assert libcrypt.crypt(phrase, GOOD.encode()) is None
    assert libcrypt.verify(phrase, GOOD) is False
    assert libcrypt.verify(b"Hello world!", GOOD) is True
