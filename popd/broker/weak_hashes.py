"""Dovecot's legacy password schemes, verified only where the operator
allowed them (`auth.allow_weak_schemes: true`) so that a migrated site
works on day one while every such login says it needs re-hashing.

Runs in: the auth broker's hashing workers (and the broker at load, to
check an entry parses).  They are weak for the reasons passwd.py gives:
cleartext, unsalted or salted single digests and MD5/DES crypt fall to a
GPU in days once a file leaks.  Nothing here makes hashes: popd-passwd
writes only the strong schemes.

Digests are compared in constant time; Dovecot's encodings are followed:
base64 by default, or hex where the name says so ({PLAIN-MD5},
{SHA256.HEX}).
"""
import base64
import binascii
import hashlib
import hmac
import re

from popd.broker import libcrypt

# Scheme name -> (digest, salted, default encoding).
_DIGESTS = {
    "SHA": ("sha1", False, "b64"), "SHA1": ("sha1", False, "b64"),
    "SHA256": ("sha256", False, "b64"), "SHA512": ("sha512", False, "b64"),
    "LDAP-MD5": ("md5", False, "b64"), "PLAIN-MD5": ("md5", False, "hex"),
    "SSHA": ("sha1", True, "b64"), "SSHA256": ("sha256", True, "b64"),
    "SMD5": ("md5", True, "b64"),
}
_CLEARTEXT = ("PLAIN", "CLEAR", "CLEARTEXT")
# crypt(3) forms, verified through libcrypt (its self-test decides).
_CRYPT = {"MD5-CRYPT": "$1$", "DES-CRYPT": "des"}
SCHEMES = frozenset(_DIGESTS) | frozenset(_CLEARTEXT) | frozenset(_CRYPT)
_CRYPT_FORMS = {"MD5-CRYPT": re.compile(r"\$1\$[./0-9A-Za-z]{0,8}\$[./0-9A-Za-z]{22}"),
                "DES-CRYPT": re.compile(r"[./0-9A-Za-z]{13}")}
_ENCODINGS = {"HEX": "hex", "B64": "b64", "BASE64": "b64"}


def split_name(prefix):
    """'SHA256.HEX' -> ('SHA256', 'hex'); encoding None if not given."""
    name, _, encoding = prefix.upper().partition(".")
    return name, _ENCODINGS.get(encoding) if encoding else None


def _decode(body, encoding):
    if encoding == "hex":
        return bytes.fromhex(body)
    return base64.b64decode(body, validate=True)


def check_form(scheme, body, encoding=None):
    """Raise ValueError if `body` cannot be a hash of `scheme`."""
    if scheme in _CLEARTEXT:
        if not body:
            raise ValueError("empty password")
        return
    if scheme in _CRYPT:
        if _CRYPT[scheme] not in libcrypt.WORKING:
            raise ValueError(f"{scheme} cannot be verified here: the system's "
                             f"libcrypt does not support it")
        if not _CRYPT_FORMS[scheme].fullmatch(body):
            raise ValueError(f"malformed {scheme} hash")
        return
    digest, salted, default = _DIGESTS[scheme]
    try:
        raw = _decode(body, encoding or default)
    except (ValueError, binascii.Error):
        raise ValueError(f"malformed {scheme} hash") from None
    size = hashlib.new(digest).digest_size
    if len(raw) < size + (1 if salted else 0) or (not salted and len(raw) != size):
        raise ValueError(f"malformed {scheme} hash")


def verify(scheme, body, secret, encoding=None):
    """True if `secret` (bytes) matches; never raises."""
    try:
        if scheme in _CLEARTEXT:
            return hmac.compare_digest(body.encode(), secret)
        if scheme in _CRYPT:
            return libcrypt.verify(secret, body)
        digest, salted, default = _DIGESTS[scheme]
        raw = _decode(body, encoding or default)
        size = hashlib.new(digest).digest_size
        expected, salt = raw[:size], raw[size:] if salted else b""
        return hmac.compare_digest(hashlib.new(digest, secret + salt).digest(), expected)
    except Exception:
        return False
