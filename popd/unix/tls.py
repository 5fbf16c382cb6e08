"""TLS: the server context, the handshake, and close_notify.

Runs in: the supervisor, which builds the SSLContext as root after the
broker is forked and before any slot is (so the broker never holds the
key, and no front could ever open the key file: they are chrooted and
unprivileged); and the fronts, which inherit the context through fork and
do every handshake.

Choices (research notes, section 4):
- Mozilla "intermediate": TLS 1.2 and 1.3, six AEAD suites for TLS 1.2, no
  DHE, the client's order of preference (OP_CIPHER_SERVER_PREFERENCE off).
- No session tickets: forked fronts would share one ticket key for the
  life of the supervisor, and POP3 gains little from resumption.
- No renegotiation, no compression.
- ALPN "pop3" offered, never required: curl, fetchmail and poplib send no
  ALPN.  Cross-protocol defences live in the protocol layer (nothing a
  client sends is echoed back).
"""
import os
import select
import socket
import ssl
import stat
import time

from popd.unix.logsetup import sanitize

# Mozilla server-side TLS guidelines 6.0, "intermediate", TLS 1.2 suites.
# TLS 1.3 suites are OpenSSL's defaults (all AEAD).
MOZILLA_INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2,
                "TLSv1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["pop3"]                 # IANA: "POP3, RFC 2595"

# After our close_notify, how long we read (and drop) what the client still
# sends, so that unread input does not turn our close into a RST that could
# destroy the last reply before the client has read it.
CLOSE_LINGER = 2.0

_context = None                 # set once in the supervisor, inherited by fork


class TLSConfigError(Exception):
    """One line naming the file (or key) and what to do about it."""


class HandshakeFailed(Exception):
    """The handshake did not complete; args[0] is a short loggable reason."""


class _Encrypted(Exception):
    pass


def _no_password():
    # Without this, OpenSSL would prompt on the terminal for an encrypted key.
    raise _Encrypted()


def _check_readable(what, path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise TLSConfigError(f"{what}: {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSConfigError(f"{what}: {path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise TLSConfigError(f"{what}: {path}: {e.strerror}") from None
    return st


def _check_key_mode(path, st, what="tls.key"):
    """The key must not be readable by others nor writable by anyone but its
    owner (group read is fine: Debian's ssl-cert group)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o004:
        raise TLSConfigError(f"{what}: {path} is readable by others (mode "
                             f"{mode:04o}); run: chmod 0600 {path}")
    if mode & 0o022:
        raise TLSConfigError(f"{what}: {path} is writable by group or others "
                             f"(mode {mode:04o}); run: chmod 0600 {path}")


def build_context(tls_cfg):
    """The server SSLContext from the `tls:` section; TLSConfigError names
    the file and the problem.  Reads the keys: call as root, in the
    supervisor only.  With tls.certificates that name hosts, the context
    picks one per name the client sends (SNI): exact names first, then
    `*.domain` for one label; anything else gets the default pair."""
    ctx = _new_context(tls_cfg)
    _load_pair(ctx, tls_cfg.cert, tls_cfg.key, "tls.cert", "tls.key")
    by_name = {}
    for i, extra in enumerate(tls_cfg.certificates):
        where = f"tls.certificates[{i}]"
        if not extra.names:
            _load_pair(ctx, extra.cert, extra.key, f"{where}.cert", f"{where}.key")
            continue
        # Pairs naming the same hosts share a context (RSA + ECDSA).
        named = by_name.get(extra.names[0]) or _new_context(tls_cfg)
        _load_pair(named, extra.cert, extra.key, f"{where}.cert", f"{where}.key")
        for name in extra.names:
            by_name[name] = named
    if by_name:
        ctx.sni_callback = _sni_chooser(by_name)
    return ctx


def _sni_chooser(by_name):
    def choose(ssock, server_name, _ctx):
        if server_name:
            name = server_name.lower()
            chosen = by_name.get(name) or by_name.get("*." + name.partition(".")[2])
            if chosen is not None:
                ssock.context = chosen
        return None                     # go on: a name we lack gets the default
    return choose


def _new_context(tls_cfg):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[tls_cfg.min_version]
    try:
        ctx.set_ciphers(tls_cfg.ciphers)
    except ssl.SSLError:
        raise TLSConfigError(f"tls.ciphers: {tls_cfg.ciphers!r} selects no "
                             f"cipher") from None
    ctx.options |= (ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
                    | ssl.OP_NO_RENEGOTIATION)
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0                 # TLS 1.3: no tickets either
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _load_pair(ctx, cert, key, cert_key, key_key):
    """One certificate chain and its key into `ctx` (OpenSSL keeps one pair
    per key type, so an RSA and an ECDSA pair can share a context)."""
    _check_readable(cert_key, cert)
    key_st = _check_readable(key_key, key)
    _check_key_mode(key, key_st, key_key)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise TLSConfigError(f"{cert_key}: {cert} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise TLSConfigError(f"{key_key}: {key} is encrypted; popd needs "
                             f"an unencrypted key (protected by its file "
                             f"mode, 0600)") from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"{key_key}: {key} does not match the "
                                 f"certificate in {cert}") from None
        raise TLSConfigError(f"{key_key}: {key} holds no usable PEM "
                             f"private key") from None
    except OSError as e:
        raise TLSConfigError(f"{cert_key}/{key_key}: {e.strerror}") from None


def install(ctx):
    """Called by the supervisor before the pool is forked."""
    global _context
    _context = ctx


def context():
    return _context


def reason(exc):
    """A short loggable reason for a failed handshake (never raw client data)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return sanitize(exc.reason, 60)
    if isinstance(exc, OSError) and exc.strerror:
        return sanitize(exc.strerror, 60)
    return type(exc).__name__


def handshake(sock, deadline):
    """Wrap a non-blocking socket and complete the server handshake before
    `deadline` (time.monotonic()).  Returns the SSLSocket; on failure closes
    the connection and raises HandshakeFailed.  The deadline is the login
    deadline: a client that stalls inside the handshake is dropped with it."""
    sock.setblocking(False)
    try:
        ssock = _context.wrap_socket(sock, server_side=True,
                                     do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        # Python checks the socket as it wraps it: a client that reset the
        # connection (or sent bytes and closed) fails here, not below.
        sock.close()
        raise HandshakeFailed(reason(e)) from None
    try:
        while True:
            try:
                ssock.do_handshake()
                return ssock
            except ssl.SSLWantReadError:
                want = ([ssock], [])
            except ssl.SSLWantWriteError:
                want = ([], [ssock])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(*want, [], remaining)):
                raise HandshakeFailed("timeout")
    except HandshakeFailed:
        ssock.close()
        raise
    except (OSError, ValueError) as e:          # SSLError is an OSError
        ssock.close()
        raise HandshakeFailed(reason(e)) from None


def describe(ssock):
    """'TLSv1.3 TLS_AES_256_GCM_SHA384 alpn=pop3' for the log."""
    cipher = ssock.cipher()
    return (f"{ssock.version()} {cipher[0] if cipher else '?'} "
            f"alpn={ssock.selected_alpn_protocol() or '-'}")


class TLSStream:
    """An SSLSocket shaped as protocol.Session and LineReader expect a
    socket: 'no record yet' / 'send buffer full' read as BlockingIOError
    (the SSL exceptions for them are not), and pending() is exposed so the
    reader never waits on the socket while decrypted bytes are buffered."""

    def __init__(self, ssock):
        self.ssl = ssock

    def fileno(self):
        return self.ssl.fileno()

    def pending(self):
        return self.ssl.pending()

    def setblocking(self, flag):
        self.ssl.setblocking(flag)

    def recv(self, n):
        try:
            return self.ssl.recv(n)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError() from None

    def send(self, data):
        try:
            return self.ssl.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError() from None

    def shutdown(self, how):
        close_notify(self.ssl)

    def close(self):
        self.ssl.close()


def close_notify(ssock, linger=CLOSE_LINGER):
    """Send our close_notify (openssl s_client and others report a bare
    close as a truncation attack), half-close, and drop what the client
    still sends for up to `linger` seconds.  Never waits for the client's
    own close_notify beyond that.  The caller closes the socket."""
    deadline = time.monotonic() + linger
    ssock.setblocking(False)
    try:
        while True:
            try:
                ssock.unwrap()
                break                           # both close_notifys seen
            except ssl.SSLWantReadError:
                break                           # ours is sent; theirs may come
            except ssl.SSLWantWriteError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [ssock], [], remaining)[1]:
                    return
    except (OSError, ValueError):
        return                                  # the peer is already gone
    try:
        ssock.shutdown(socket.SHUT_WR)          # plain FIN from here on
    except OSError:
        return
    buf = bytearray(4096)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([ssock], [], [], remaining)[0]:
            return
        try:
            if not ssock.recv_into(buf):
                return
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return
