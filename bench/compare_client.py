"""POP3 clients for bench/compare.py: TCP_NODELAY, one command at a time
(like poplib and fetchmail), every reply checked.

Runs in: the benchmark process.  Blocking sessions serve RETR and the
mailbox-open scenario; asyncio sessions serve the concurrent ones (login
rate, held sessions, legitimate logins under attack).  A fake server gives
the client's own ceiling for RETR.
"""
import asyncio
import errno
import os
import socket
import ssl
import time

BUF = 1 << 20


class ProtoError(Exception):
    pass


def ok(line, what):
    if not line.startswith(b"+OK"):
        raise ProtoError(f"{what}: {line[:80]!r}")
    return line


def nodelay(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_context(ca_file):
    return ssl.create_default_context(cafile=str(ca_file))


# -- blocking ---------------------------------------------------------------------

class Session:
    def __init__(self, host, port, mode="plain", ctx=None, timeout=120):
        """mode: plain, stls (STLS after the greeting) or implicit."""
        sock = socket.create_connection((host, port), timeout=timeout)
        nodelay(sock)
        if mode == "implicit":
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock, self.f = sock, sock.makefile("rb", buffering=BUF)
        ok(self.f.readline(), "greeting")
        if mode == "stls":
            self.cmd(b"STLS")
            # Nothing follows +OK before the handshake, so nothing is buffered.
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
            self.f = self.sock.makefile("rb", buffering=BUF)

    def cmd(self, line):
        self.sock.sendall(line + b"\r\n")
        return ok(self.f.readline(), line.split()[0].decode())

    def login(self, user, password):
        self.cmd(b"USER " + user.encode())
        return self.cmd(b"PASS " + password.encode())

    def multiline(self):
        """The lines of a multi-line reply (read in large pieces)."""
        data = bytearray()
        while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
            piece = self.f.read1(BUF)
            if not piece:
                raise ProtoError("connection closed in a multi-line reply")
            data += piece
        return bytes(data[:-3]).split(b"\r\n")[:-1]

    def cipher(self):
        c = getattr(self.sock, "cipher", None)
        return "-" if c is None else f"{self.sock.version()} {c()[0]}"

    def quit(self, wait_close=False):
        self.cmd(b"QUIT")
        if wait_close:
            while self.f.read1(BUF):
                pass
        self.close()

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def check_stat(line, count, octets):
    parts = line.split()
    if parts[1:3] != [str(count).encode(), str(octets).encode()]:
        raise ProtoError(f"STAT: {line.strip()!r}, expected {count} {octets}")


def retr_run(host, port, mode, ctx, user, password, ref, meter):
    """Log in, check STAT and LIST, RETR every message once (one command at
    a time, each compared with the reference), QUIT.  meter() is started
    just before the first RETR and stopped after the last message.
    Returns (seconds of the RETR loop, cipher, meter's result)."""
    s = Session(host, port, mode, ctx)
    try:
        s.login(user, password)
        check_stat(s.cmd(b"STAT"), ref.count, ref.octets)
        s.cmd(b"LIST")
        got = [int(line.split()[1]) for line in s.multiline()]
        if got != ref.sizes:
            bad = sum(a != b for a, b in zip(got, ref.sizes)) + abs(len(got) - len(ref.sizes))
            raise ProtoError(f"LIST: {bad} sizes differ from the reference")
        sock, f = s.sock, s.f
        m = meter()
        t = time.perf_counter()
        for i, want in enumerate(ref.wire, 1):
            sock.sendall(b"RETR %d\r\n" % i)
            ok(f.readline(), f"RETR {i}")
            got = f.read(len(want))
            if got != want:
                at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                          min(len(got), len(want)))
                raise ProtoError(f"RETR {i}: bytes differ from the reference at offset {at} "
                                 f"(got {got[max(0, at - 30):at + 30]!r})")
        elapsed = time.perf_counter() - t
        cores = m.stop()
        cipher = s.cipher()
        s.quit()
        return elapsed, cipher, cores
    finally:
        s.close()


def open_run(host, port, user, password, count, octets):
    """PASS → +OK, PASS → STAT answer, UIDL, QUIT → close (seconds), and the
    UIDL list (checked: count, numbering, syntax, uniqueness)."""
    s = Session(host, port)
    try:
        s.cmd(b"USER " + user.encode())
        t0 = time.perf_counter()
        s.cmd(b"PASS " + password.encode())
        t1 = time.perf_counter()
        check_stat(s.cmd(b"STAT"), count, octets)
        t2 = time.perf_counter()
        s.cmd(b"UIDL")
        lines = s.multiline()
        t3 = time.perf_counter()
        uids = []
        for i, line in enumerate(lines, 1):
            num, _, uid = line.partition(b" ")
            if num != str(i).encode() or not 1 <= len(uid) <= 70 or \
                    any(c < 0x21 or c > 0x7E for c in uid):
                raise ProtoError(f"UIDL line {i}: {line[:80]!r}")
            uids.append(uid)
        if len(uids) != count or len(set(uids)) != count:
            raise ProtoError(f"UIDL: {len(uids)} lines, {len(set(uids))} unique, "
                             f"expected {count}")
        s.quit(wait_close=True)
        t4 = time.perf_counter()
        return {"pass": t1 - t0, "stat": t2 - t0, "uidl": t3 - t2, "quit": t4 - t3}, uids
    finally:
        s.close()


# -- the client's ceiling ---------------------------------------------------------

def fake_server(ref, server_ctx=None):
    """A forked POP3 server that answers RETR from memory (the reference
    bytes, sendall, TCP_NODELAY), one connection after another until it is
    killed: what the client reaches when the server costs almost nothing.
    Returns (port, pid)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    pid = os.fork()
    if pid:
        lsock.close()
        return port, pid
    try:
        listing = b"".join(b"%d %d\r\n" % (i, n) for i, n in enumerate(ref.sizes, 1)) + b".\r\n"
        while True:
            conn, _ = lsock.accept()
            nodelay(conn)
            if server_ctx:
                conn = server_ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb", buffering=BUF)
            conn.sendall(b"+OK fake\r\n")
            while line := f.readline():
                word, *rest = line.split()
                if word == b"RETR":
                    i = int(rest[0])
                    conn.sendall(b"+OK %d octets\r\n" % ref.sizes[i - 1])
                    conn.sendall(ref.wire[i - 1])
                elif word == b"STAT":
                    conn.sendall(b"+OK %d %d\r\n" % (ref.count, ref.octets))
                elif word == b"LIST":
                    conn.sendall(b"+OK\r\n" + listing)
                elif word == b"QUIT":
                    conn.sendall(b"+OK\r\n")
                    break
                else:
                    conn.sendall(b"+OK\r\n")
            f.close()
            conn.close()
    finally:
        os._exit(0)


# -- asyncio ------------------------------------------------------------------------

async def a_ok(reader, what):
    return ok(await reader.readline(), what)


async def a_session(host, port, mode, ctx, user, password, stat, keep=False,
                    local_addr=None, marks=None):
    """connect [TLS] USER PASS STAT [QUIT].  stat: (count, octets).  With
    keep, returns the open (reader, writer) after STAT."""
    if mode == "implicit":
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost",
                                             local_addr=local_addr, limit=1 << 16)
    else:
        r, w = await asyncio.open_connection(host, port, local_addr=local_addr, limit=1 << 16)
    try:
        nodelay(w.get_extra_info("socket"))
        await a_ok(r, "greeting")
        if mode == "stls":
            w.write(b"STLS\r\n")
            await a_ok(r, "STLS")
            await w.start_tls(ctx, server_hostname="localhost")
        w.write(b"USER %s\r\n" % user.encode())
        await a_ok(r, "USER")
        w.write(b"PASS %s\r\n" % password.encode())
        await a_ok(r, "PASS")
        w.write(b"STAT\r\n")
        check_stat(await a_ok(r, "STAT"), *stat)
        if marks is not None:
            marks["stat"] = time.perf_counter()
        if keep:
            return r, w
        w.write(b"QUIT\r\n")
        await a_ok(r, "QUIT")
    except BaseException:
        w.transport.abort()
        raise
    w.close()
    return None


def describe(exc):
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text[:70]}"


async def login_rate(host, port, mode, ctx, users, password, stat, seconds, clients=16):
    """`clients` workers, each looping over its own users (no two workers
    share a mailbox) until `seconds` have passed."""
    pool = users[:len(users) // clients * clients]
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    latencies, errors = [], {}

    async def worker(i):
        k = 0
        while loop.time() < stop:
            user = pool[(i + clients * k) % len(pool)]
            k += 1
            t = time.perf_counter()
            try:
                await asyncio.wait_for(a_session(host, port, mode, ctx, user, password, stat), 30)
                latencies.append(time.perf_counter() - t)
            except Exception as e:              # noqa: BLE001 - counted and reported
                errors[describe(e)] = errors.get(describe(e), 0) + 1
                await asyncio.sleep(0.05)
    t = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, errors, time.perf_counter() - t


async def open_sessions(host, port, mode, ctx, users, password, stat, concurrency=16):
    """Log every user in (STAT, then idle); returns (sessions, errors)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(user):
        async with sem:
            return await asyncio.wait_for(
                a_session(host, port, mode, ctx, user, password, stat, keep=True), 60)
    out = await asyncio.gather(*(one(u) for u in users), return_exceptions=True)
    sessions = [x for x in out if not isinstance(x, BaseException)]
    errors = {}
    for x in out:
        if isinstance(x, BaseException):
            errors[describe(x)] = errors.get(describe(x), 0) + 1
    return sessions, errors


async def close_sessions(sessions):
    async def one(r, w):
        try:
            w.write(b"QUIT\r\n")
            await asyncio.wait_for(r.readline(), 10)
        except Exception:                       # noqa: BLE001 - closing anyway
            pass
        w.transport.abort()
    await asyncio.gather(*(one(r, w) for r, w in sessions))


async def legit_logins(host, port, users, password, stat, seconds, interval, timeout=30):
    """One login every `interval` s for `seconds` (open loop: a slow login
    does not delay the next); latency = connect → STAT answer."""
    latencies, errors = [], {}

    async def one(user):
        marks, t = {}, time.perf_counter()
        try:
            await asyncio.wait_for(a_session(host, port, "plain", None, user, password, stat,
                                             marks=marks), timeout)
            latencies.append(marks["stat"] - t)
        except Exception as e:                  # noqa: BLE001 - counted and reported
            errors[describe(e)] = errors.get(describe(e), 0) + 1
    tasks, k = [], 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tasks.append(asyncio.ensure_future(one(users[k % len(users)])))
        k += 1
        await asyncio.sleep(max(0.0, t0 + k * interval - time.perf_counter()))
    await asyncio.gather(*tasks)
    return latencies, errors


# -- held connections from another address ------------------------------------------

def attack_open(host, port, count, source):
    """`count` silent connections from `source` (non-blocking connects: the
    kernel finishes them as the server's backlog allows)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
        socks.append(s)
    return socks


def attack_census(socks):
    """What the server did with each held connection so far."""
    out = {}
    for s in socks:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            kind = f"error {errno.errorcode.get(err, err)}"
        else:
            try:
                data = s.recv(512, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if not data:
                    kind = "closed by server, no bytes"
                elif data.startswith(b"+OK"):
                    kind = "greeted"
                else:
                    kind = "answered " + data.split(b"\r\n")[0][:50].decode(errors="replace")
                    if data.endswith(b"\r\n") and _eof_after(s, len(data)):
                        kind += " (closed)"
            except BlockingIOError:
                kind = "connected, no greeting"
            except OSError as e:
                kind = f"error {errno.errorcode.get(e.errno, e.errno)}"
        out[kind] = out.get(kind, 0) + 1
    return out


def _eof_after(s, n):
    try:
        data = s.recv(n + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return False if len(data) > n else _peer_closed(s)
    except OSError:
        return False


def _peer_closed(s):
    import select
    p = select.poll()
    p.register(s, select.POLLRDHUP)
    return any(ev & select.POLLRDHUP for _, ev in p.poll(0))
