"""SASL PLAIN decoding (popd/pop3/sasl.py): strict, bounded, never echoes input."""
import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from popd import limits
from popd.pop3 import sasl

# Login names and passwords as clients may send them: no NUL (the PLAIN
# separator) and, for names, no control characters.
names = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",),
                              blacklist_characters="\x7f"),
                min_size=1).filter(lambda s: len(s.encode()) <= limits.MAX_LOGIN)
secrets = st.binary(min_size=1, max_size=limits.MAX_SECRET).filter(lambda b: b"\0" not in b)
ERRORS = {sasl.ERR_MALFORMED, sasl.ERR_AUTHZID}


@given(names, secrets, st.booleans())
def test_plain_round_trip(authcid, secret, with_authzid):
    authzid = authcid if with_authzid else ""
    wire = sasl.encode_plain(authcid, secret, authzid)
    assert len(wire) <= limits.MAX_SASL_LINE          # the longest fits the line bound
    creds = sasl.parse_plain(sasl.decode_response(wire))
    assert creds == sasl.Credentials(authzid, authcid, secret)


@given(st.binary(max_size=3000))
@example(b"=")
@example(b"*")
@example(b"AGFsaWNl=")        # excess padding
@example(b"AGFsaWNl\n")
@example(b"AG Fs")
@example(b"AGFsaWNm")         # non-zero trailing bits: not canonical
def test_any_response_decodes_or_is_refused_with_a_constant(data):
    try:
        message = sasl.decode_response(data)
    except sasl.SaslError as e:
        assert e.args[0] in ERRORS
        return
    assert base64.b64encode(message) == data or data in (b"", b"=")
    try:
        creds = sasl.parse_plain(message)
    except sasl.SaslError as e:
        assert e.args[0] in ERRORS
        return
    assert creds.authcid and creds.secret and b"\0" not in creds.secret


@given(st.binary(max_size=2000))
def test_any_message_parses_or_is_refused_with_a_constant(message):
    try:
        creds = sasl.parse_plain(message)
    except sasl.SaslError as e:
        assert e.args[0] in ERRORS
        return
    assert message == b"\0".join([creds.authzid.encode(), creds.authcid.encode(),
                                  creds.secret])


@pytest.mark.parametrize("data", [b"", b"="])
def test_empty_response(data):
    assert sasl.decode_response(data) == b""
    with pytest.raises(sasl.SaslError):
        sasl.parse_plain(b"")


def test_non_canonical_base64_is_refused():
    good = sasl.encode_plain("alice", "pw")
    for bad in (good + b"=", good + b"\n", b" " + good, good.replace(b"A", b"A ", 1)):
        with pytest.raises(sasl.SaslError):
            sasl.decode_response(bad)


@pytest.mark.parametrize("message", [
    b"alice\0pw",                       # one NUL
    b"\0alice\0pw\0",                   # three
    b"\0\0pw",                          # no authcid
    b"\0alice\0",                       # no password
    b"\0" + b"a" * (limits.MAX_LOGIN + 1) + b"\0pw",
    b"\0alice\0" + b"p" * (limits.MAX_SECRET + 1),
    b"\0al\xffice\0pw",                 # not UTF-8
    b"\0al\x01ice\0pw",                 # control character in the name
])
def test_malformed_plain(message):
    with pytest.raises(sasl.SaslError) as err:
        sasl.parse_plain(message)
    assert err.value.args[0] == sasl.ERR_MALFORMED


def test_other_authorization_identity_is_refused():
    with pytest.raises(sasl.SaslError) as err:
        sasl.parse_plain(b"bob\0alice\0pw")
    assert err.value.args[0] == sasl.ERR_AUTHZID
    assert sasl.parse_plain(b"alice\0alice\0pw").authzid == "alice"


def test_oversized_response_is_refused_before_decoding():
    with pytest.raises(sasl.SaslError):
        sasl.decode_response(b"A" * (limits.MAX_SASL_LINE + 4))
