"""Issue 12: a Dovecot passwd file with legacy lines and extra fields.

One bad line refuses that line only; weak schemes verify only with
allow_weak; Dovecot's `nologin`, `allow_nets`, `userdb_home` and
`userdb_mail` fields are honoured and any other is reported once with its
line number.  Weak hashes are made by passlib (an implementation other
than popd's) wherever it has the scheme.
"""
import base64
import hashlib

import pytest
from passlib.hash import (
    des_crypt,
    hex_md5,
    hex_sha256,
    ldap_md5,
    ldap_salted_md5,
    ldap_salted_sha1,
    ldap_salted_sha256,
    ldap_sha1,
    md5_crypt,
)

from popd.broker import passwd
from popd.broker.passwd import PasswdEntry, Verifier
from tests.dovecot_hashes import DOVECOT_SHA512

PASSWORD = "test"
WEAK = {
    "plain": "{PLAIN}test",
    "cleartext": "{CLEARTEXT}test",
    "ssha": ldap_salted_sha1.hash(PASSWORD),
    "ssha256": ldap_salted_sha256.hash(PASSWORD),
    "smd5": ldap_salted_md5.hash(PASSWORD),
    "sha": ldap_sha1.hash(PASSWORD),
    "ldapmd5": "{LDAP-MD5}" + ldap_md5.hash(PASSWORD)[len("{MD5}"):],
    "plainmd5": "{PLAIN-MD5}" + hex_md5.hash(PASSWORD),
    "sha256hex": "{SHA256.HEX}" + hex_sha256.hash(PASSWORD),
    "sha512": "{SHA512}" + base64.b64encode(hashlib.sha512(b"test").digest()).decode(),
    "md5crypt": "{MD5-CRYPT}" + md5_crypt.hash(PASSWORD),
    "md5": "{MD5}" + md5_crypt.hash(PASSWORD),
    "bare1": md5_crypt.hash(PASSWORD),
    "crypt1": "{CRYPT}" + md5_crypt.hash(PASSWORD),
    "des": "{CRYPT}" + des_crypt.hash(PASSWORD),
}


def file_of(lines):
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def weak_verifier():
    v = Verifier()
    v.warm_up(schemes=("SHA512-CRYPT",))
    return v


@pytest.mark.parametrize("login", sorted(WEAK))
def test_weak_schemes_verify_only_when_allowed(login, weak_verifier):
    data = file_of([f"{login}:{WEAK[login]}:1001:1001::/home/{login}::"])
    entries, refused, _ = passwd.read_entries(data, "pw")
    assert entries == {} and len(refused) == 1
    assert "is weak" in str(refused[0]) and "line 1" in str(refused[0])
    assert WEAK[login].split("}")[-1] not in str(refused[0])
    entries, refused, _ = passwd.read_entries(data, "pw", allow_weak=True)
    assert refused == []
    entry = entries[login]
    assert entry.weak is True
    assert weak_verifier.verify(entry, b"test") is True
    assert weak_verifier.verify(entry, b"tesT") is False
    assert weak_verifier.verify(entry, b"") is False


def test_one_bad_line_refuses_that_line_only():
    data = file_of([
        "# migrated from Dovecot",
        f"good:{DOVECOT_SHA512}:1001:1001::/home/good::",
        "plain:{PLAIN}secret:1002:1002::/home/plain::",
        "cram:{CRAM-MD5}e02d374fde0dc75a17a557039a3a5338c7743304777dccd376f332bee68d2cf6:1003:1003",
        f"baduid:{DOVECOT_SHA512}:vmail:1004",
        f"good:{DOVECOT_SHA512}:1005:1005",
        f"second:{DOVECOT_SHA512}:1006:1006::/home/second::",
    ])
    entries, refused, _ = passwd.read_entries(data, "/etc/popd/passwd")
    assert sorted(entries) == ["good", "second"]
    assert entries["good"].uid == 1001              # the first one counts
    lines = [str(e) for e in refused]
    assert [line.split(":")[0] for line in lines] == [
        "/etc/popd/passwd, line 3", "/etc/popd/passwd, line 4",
        "/etc/popd/passwd, line 5", "/etc/popd/passwd, line 6"]
    assert "weak" in lines[0] and "cannot be verified" in lines[1]
    assert "uid of 'baduid'" in lines[2] and "duplicate user 'good'" in lines[3]
    assert all("secret" not in line and "e02d374f" not in line for line in lines)
    # popd-passwd stays strict, but keeps the weak line so it can re-hash it.
    with pytest.raises(passwd.PasswdError, match="line 4"):
        passwd.parse_passwd(data, "/etc/popd/passwd")


def test_extra_fields_are_honoured_or_reported():
    data = file_of([
        f"off:{DOVECOT_SHA512}:1001:1001::/home/off::nologin reason=moved",
        f"lan:{DOVECOT_SHA512}:1002:1002::/home/lan::allow_nets=192.0.2.0/24,::1",
        f"moved:{DOVECOT_SHA512}:1003:1003::/home/old::userdb_home=/srv/moved "
        "userdb_mail=mbox:~/mail:INBOX=~/mail/inbox",
        f"odd:{DOVECOT_SHA512}:1004:1004::/home/odd::userdb_quota_rule=*:storage=1G proxy",
        f"maildir:{DOVECOT_SHA512}:1005:1005::/home/m::userdb_mail=maildir:~/Maildir",
        f"nets:{DOVECOT_SHA512}:1006:1006::/home/n::allow_nets=not-a-net",
    ])
    entries, refused, notes = passwd.read_entries(data, "pw")
    assert entries["off"].refused == "nologin (moved)"
    assert [str(n) for n in entries["lan"].allow_nets] == ["192.0.2.0/24", "::1/128"]
    assert entries["lan"].refused is None and entries["lan"].allow_nets
    assert entries["moved"].home == "/srv/moved"
    assert entries["moved"].mail == "~/mail/inbox"
    assert entries["odd"].refused is None
    assert notes == [
        "pw, line 4: extra field 'userdb_quota_rule' of 'odd' is not used by popd; ignored",
        "pw, line 4: extra field 'proxy' of 'odd' is not used by popd; ignored"]
    assert [str(e) for e in refused] == [
        "pw, line 5: 'maildir': userdb_mail='maildir:~/Maildir': popd serves mbox only",
        "pw, line 6: 'nets': allow_nets='not-a-net' is not a comma-separated list of "
        "addresses or networks"]


def test_locked_and_disabled_hashes_are_refused_lines():
    for stored in ("!" + DOVECOT_SHA512, "*", "!"):
        _, refused, _ = passwd.read_entries(file_of([f"x:{stored}:1001:1001"]), "pw")
        assert len(refused) == 1


def test_a_weak_entry_is_never_verified_through_a_strict_entry():
    """The worker gets only the stored string: without the weak flag a
    {PLAIN} hash must not verify (it is treated as an unknown user)."""
    v = Verifier()
    v.warm_up(schemes=("SHA512-CRYPT",))
    assert v.verify(PasswdEntry("x", "{PLAIN}test", 1, 1, ""), b"test") is False
    assert v.verify(PasswdEntry("x", "{PLAIN}test", 1, 1, "", weak=True), b"test") is True
