"""SASL for POP3's AUTH command (RFC 5034): decoding, bounded and strict.

Runs in: the front.  Pure functions on bytes; the dialogue itself (the
"+ " continuation, reading the response line under limits.MAX_SASL_LINE,
asking the broker) is in authorization.py, so the decoder can be tested
on its own (tests/unit/test_sasl.py, with hypothesis).

Only PLAIN (RFC 4616) is offered: over TLS it is what every client
supports, and the broker verifies it exactly as it verifies USER/PASS.
Mechanisms that need plaintext-equivalent secrets on disk (CRAM-MD5,
DIGEST-MD5) are not offered, for the reason APOP is not.

Every error is one of the constant texts below: nothing a client sent is
ever echoed back.
"""
import binascii
from dataclasses import dataclass

from popd import limits

MECHANISMS = ("PLAIN",)
CANCEL = b"*"                   # RFC 5034 section 4: the client gives up

ERR_MALFORMED = "Malformed SASL response"
ERR_AUTHZID = "Authorization identity must be empty or the login name"


class SaslError(Exception):
    """args[0] is one of the ERR_* texts above."""


@dataclass(frozen=True)
class Credentials:
    authzid: str
    authcid: str
    secret: bytes


def decode_response(data):
    """A base64 response (initial response or continuation line) to bytes.

    "=" is the empty response (RFC 5034); an empty continuation line is
    empty too.  Only canonical base64 is accepted: a strict decode whose
    re-encoding gives back exactly the input, so there is one spelling of
    every response (no whitespace, no excess padding, no stray bits)."""
    if data in (b"", b"="):
        return b""
    if len(data) > limits.MAX_SASL_LINE:
        raise SaslError(ERR_MALFORMED)
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SaslError(ERR_MALFORMED) from None
    if binascii.b2a_base64(decoded, newline=False) != data:
        raise SaslError(ERR_MALFORMED)
    return decoded


def _text(raw, max_bytes):
    if len(raw) > max_bytes:
        raise SaslError(ERR_MALFORMED)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(ERR_MALFORMED) from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise SaslError(ERR_MALFORMED)
    return text


def parse_plain(message):
    """RFC 4616: [authzid] NUL authcid NUL passwd, to Credentials.

    The authorization identity may only be empty or the login name itself:
    popd has no administrators acting for other users, so any other value
    is refused rather than silently ignored."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError(ERR_MALFORMED)
    raw_authzid, raw_authcid, secret = parts
    if not raw_authcid or not secret or len(secret) > limits.MAX_SECRET:
        raise SaslError(ERR_MALFORMED)
    authcid = _text(raw_authcid, limits.MAX_LOGIN)
    authzid = _text(raw_authzid, limits.MAX_LOGIN)
    if authzid not in ("", authcid):
        raise SaslError(ERR_AUTHZID)
    return Credentials(authzid, authcid, secret)


def encode_plain(authcid, secret, authzid=""):
    """The client side, for tests and tools: base64 of a PLAIN message."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    message = authzid.encode("utf-8") + b"\0" + authcid.encode("utf-8") + b"\0" + secret
    return binascii.b2a_base64(message, newline=False)
