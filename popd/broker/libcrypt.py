"""crypt(3) hashes through the system's libcrypt, by ctypes: SHA-crypt
($5$, $6$), yescrypt ($y$, Debian's default in /etc/shadow since 11),
gost-yescrypt ($gy$), and the weak MD5-crypt ($1$) and DES crypt that
only `auth.allow_weak_schemes` lets through.

Runs in the auth broker's hashing workers and in `popd-passwd`; passwd.py
imports it, so the library is loaded at import time: the broker imports
every module before it drops privileges, and forks its workers from itself,
so nothing is loaded after the drop.

Why not libpass for SHA-crypt: on this Python it has only its pure-Python sha2-crypt,
~2 ms per 5000-round $6$ verify against 0.9 ms in C, most of the CPU a
login costs.  Why not the `crypt` module: deprecated since 3.11, removed in
3.13.  libxcrypt's libcrypt.so.1 is on every Debian system (PAM and shadow
use it), and Dovecot verifies {SHA512-CRYPT} through the same crypt().

yescrypt has no other implementation here: libxcrypt is the one that
wrote the hashes in /etc/shadow.

Correctness first: a scheme whose self-test fails below, or every scheme if
the library cannot be loaded, stays on libpass (passwd.backend() says
which), or for yescrypt is refused with a line that says so.
Nothing is logged from here: the caller decides what is worth saying.
"""
import ctypes
import hmac

# libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE is 512 bytes with the NUL: longer
# phrases fail (ERANGE), so passwd.py leaves them to libpass.
MAX_PHRASE = 511
# sizeof(struct crypt_data) in libxcrypt's crypt.h.  Were it ever larger,
# crypt_rn would refuse this size (a failed self-test), never overflow.
_DATA_SIZE = 32768

# Per prefix: a phrase, a setting, and what libpass makes of them (for
# $y$ and $gy$, which libpass lacks: what libxcrypt 4.4.33, Debian 12's,
# made of them, so a library that reads them differently is not used).
_SELF_TEST = {
    "$y$": (b"self-test \xc3\xa9", b"$y$j9T$popdlibcryptselftest",
            b"$y$j9T$popdlibcryptselftest$jmUjHAKUmZ3xdOov9PGiuQszVFZs6X7FYYbN"
            b"W7MCgX7"),
    "$gy$": (b"self-test \xc3\xa9", b"$gy$j9T$popdlibcryptselftest",
             b"$gy$j9T$popdlibcryptselftest$up4tOJ4SoC02bJx85HYX/Rc20.rMpmKqqP"
             b"ntnN/nQf/"),
    "$1$": (b"self-test \xc3\xa9", b"$1$popdlibc", b"$1$popdlibc$.QwirKVuiQAXZy1QgAEUt1"),
    "des": (b"self-test \xc3\xa9", b"po", b"poPuS27zBCAek"),
    "$5$": (b"self-test \xc3\xa9", b"$5$rounds=1000$popd.libcrypt",
            b"$5$rounds=1000$popd.libcrypt$8Sqj7QqiGTWBAagT0zph87uu5/hMq3Kj6a"
            b"GKsMNZmJ9"),
    "$6$": (b"self-test \xc3\xa9", b"$6$rounds=1000$popd.libcrypt",
            b"$6$rounds=1000$popd.libcrypt$nNbkrVZZlkMsPUH4S9blhEBmUcckeVErWc"
            b"fwP5HnEyMGyPqUp2pi13q1XFO/GcMw3SSycD8YYyX7Cx3/KuiKU/"),
}


def _load():
    """crypt_rn() and crypt_gensalt_rn() from libcrypt.so.1, or Nones."""
    try:
        lib = ctypes.CDLL("libcrypt.so.1")
        crypt_rn, gensalt_rn = lib.crypt_rn, lib.crypt_gensalt_rn
    except (OSError, AttributeError):
        return None, None
    crypt_rn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                         ctypes.c_int)
    crypt_rn.restype = ctypes.c_char_p
    gensalt_rn.argtypes = (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                           ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    gensalt_rn.restype = ctypes.c_char_p
    return crypt_rn, gensalt_rn


# crypt_rn rather than crypt_r: it returns NULL on failure instead of a
# "*0" token.  Its work area is allocated once per process (a forked worker
# gets its own copy); popd's processes are single-threaded.
_crypt_rn, _gensalt_rn = _load()
_data = ctypes.create_string_buffer(_DATA_SIZE)


def gensalt(prefix):
    """A fresh setting for `prefix` (e.g. b"$y$") at the library's default
    cost, salted from the kernel's random source; None if unsupported."""
    if _gensalt_rn is None:
        return None
    out = ctypes.create_string_buffer(256)
    return _gensalt_rn(prefix, 0, None, 0, out, len(out)) or None


def crypt(phrase, setting):
    """crypt(3) of `phrase` under `setting` (a salt or a whole hash), or
    None for any failure."""
    # ctypes would end the strings at a NUL: "right\0junk" must not pass
    # as "right".  The broker refuses such secrets earlier; this is the
    # last line.
    if (_crypt_rn is None or b"\0" in phrase or b"\0" in setting
            or len(phrase) > MAX_PHRASE):
        return None
    result = _crypt_rn(phrase, setting, _data, _DATA_SIZE)
    # '*' starts the failure tokens of crypt() and crypt_r(); crypt_rn
    # should not return one, but one must never count as a hash.
    if not result or result.startswith(b"*"):
        return None
    return result


def verify(phrase, stored):
    """True if `phrase` hashes to `stored` (a bare $5$/$6$ hash).

    The whole string is compared, as Dovecot does: a hash libpass parsed at
    load comes back from crypt unchanged, and one that libxcrypt reads
    differently (a salt over 16 characters) is then a miss, not a match.
    """
    expected = stored.encode()
    result = crypt(phrase, expected)
    return result is not None and hmac.compare_digest(result, expected)


# Prefixes verified here; the others go to libpass.
WORKING = frozenset(prefix for prefix, (phrase, setting, known)
                    in _SELF_TEST.items() if crypt(phrase, setting) == known)
