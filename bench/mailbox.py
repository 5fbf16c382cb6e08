"""Mailbox figures through the real daemon: open + STAT (+ UIDL) of a big
mbox, first and repeat opens, against the login alone (a one-message
mailbox); RETR throughput over plain TCP, one command at a time, of a
200 MiB mbox of mixed sizes and of one of ~10 KB messages, every byte
checked against an independent reference transform.  Best and median of
the repeats are printed: the machine may be shared.

Run as root from the repository:
    /opt/popd/bin/python bench/mailbox.py [--open-mib 1024] [--retr-mib 200]
        [--small-mib 100] [--repeats 5] [--runs 3]
"""
import argparse
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare_data import many_mbox  # noqa: E402
from bench.mbox_scan import generate  # noqa: E402
from tests.daemon import USERS, Daemon  # noqa: E402


def expected_messages(data):
    """Reference transform, independent of popd.mail.mbox: split on "\\nFrom ",
    drop the From line and one trailing line end, CRLF, dot-stuff."""
    out = []
    for raw in data[5:].split(b"\nFrom "):
        content = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        text = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not text.endswith(b"\r\n"):
            text += b"\r\n"
        text = text.replace(b"\r\n.", b"\r\n..")
        if text.startswith(b"."):
            text = b"." + text
        out.append(text + b".\r\n")
    return out


class Client:
    def __init__(self, d):
        self.sock = socket.create_connection((d.host, d.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=1 << 20)
        assert self.f.readline().startswith(b"+OK")

    def cmd(self, line):
        self.sock.sendall(line + b"\r\n")
        reply = self.f.readline()
        assert reply.startswith(b"+OK"), reply
        return reply

    def multiline(self):
        lines = []
        while (line := self.f.readline()) != b".\r\n":
            lines.append(line)
        return lines


def spread(values, unit="ms", scale=1000):
    values = [v * scale for v in values]
    return (f"best {min(values):.1f} {unit}, median {statistics.median(values):.1f} {unit} "
            f"of {[round(v, 1) for v in values]}")


def open_once(d, n=None):
    """(PASS->+OK, PASS->STAT, UIDL) seconds of one session."""
    c = Client(d)
    c.cmd(b"USER alice")
    t0 = time.perf_counter()
    c.cmd(b"PASS " + USERS["alice"][0].encode())
    t1 = time.perf_counter()
    stat = c.cmd(b"STAT")
    t2 = time.perf_counter()
    c.cmd(b"UIDL")
    ids = c.multiline()
    t3 = time.perf_counter()
    if n is not None:
        assert len(ids) == len(set(ids)) == n and stat.split()[1] == str(n).encode()
    c.cmd(b"QUIT")
    return t1 - t0, t2 - t0, t3 - t2


def bench_open(mib, repeats):
    with Daemon() as d:
        path = d.spool / "alice"
        path.write_bytes(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nhi\n\n")
        os.chown(path, USERS["alice"][1], USERS["alice"][1])
        login = [open_once(d, 1) for _ in range(repeats)]
        print(f"login alone (1 message): PASS->STAT {spread([t[1] for t in login])}")
        t = time.perf_counter()
        n = generate(str(path), mib << 20)
        os.chown(path, USERS["alice"][1], USERS["alice"][1])
        print(f"open: generated {path.stat().st_size / 1e6:.0f} MB, {n} messages "
              f"in {time.perf_counter() - t:.1f} s")
        with open(path, "rb") as f:                      # warm page cache
            while f.read(8 << 20):
                pass
        time.sleep(1.1)          # no "modified within this second" special cases
        ok, stat, uidl = open_once(d, n)
        print(f"first open: PASS->+OK {1000 * ok:.0f} ms, PASS->STAT {1000 * stat:.0f} ms, "
              f"UIDL {1000 * uidl:.0f} ms")
        again = [open_once(d, n) for _ in range(repeats)]
        print(f"repeat open: PASS->STAT {spread([t[1] for t in again])}")
        print(f"repeat open: UIDL {spread([t[2] for t in again])}")


def generate_mixed(path, size, seed=200):
    """Messages of 2 KiB to 5 MiB, most of them small, like the anchor's mailbox,
    with dot lines, >From quoting, 8-bit bytes and 20 KB lines."""
    import random
    rng = random.Random(seed)
    n = written = 0
    line = b"The quick brown fox jumps over the lazy dog \xe9\xe8 0123456789\n"
    with open(path, "wb") as f:
        while written < size:
            target = int(2048 * (2560 ** (rng.random() ** 4)))   # ~1000 messages in 200 MiB
            body = bytearray()
            while len(body) < target:
                r = rng.random()
                body += (b".dot line\n" if r < 0.02 else b">From quoted\n" if r < 0.03
                         else b"x" * 20000 + b"\n" if r < 0.031 else line)
            msg = (b"From sender@example.org Mon Jan  1 00:00:00 2024\nSubject: m%d\n\n" % n
                   + bytes(body) + b"\n")
            f.write(msg)
            written += len(msg)
            n += 1
    return n


def bench_retr(label, make, runs):
    with Daemon() as d:
        path = d.spool / "bob"
        n = make(str(path))
        os.chown(path, USERS["bob"][1], USERS["bob"][1])
        expected = expected_messages(path.read_bytes())
        assert len(expected) == n
        total = sum(len(e) - 3 for e in expected)
        rates = []
        for _ in range(runs):
            c = Client(d)
            c.cmd(b"USER bob")
            c.cmd(b"PASS " + USERS["bob"][0].encode())
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            for i, want in enumerate(expected, 1):
                c.sock.sendall(b"RETR %d\r\n" % i)
                assert c.f.readline().startswith(b"+OK")
                got = c.f.read(len(want))
                if got != want:
                    raise SystemExit(f"message {i}: bytes differ")
            elapsed = time.perf_counter() - t
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            c.cmd(b"QUIT")
            client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            rates.append(total / elapsed / 1e6)
            print(f"RETR {label}: {n} messages, {total / 1e6:.1f} MB in {elapsed:.2f} s = "
                  f"{rates[-1]:.0f} MB/s (every byte checked; client used "
                  f"{client_cpu / elapsed:.2f} cores)")
        print(f"RETR {label}: best {max(rates):.0f} MB/s, median "
              f"{statistics.median(rates):.0f} MB/s of {runs}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--open-mib", type=int, default=1024)
    ap.add_argument("--retr-mib", type=int, default=200, help="mixed sizes")
    ap.add_argument("--small-mib", type=int, default=100, help="~10 KB messages")
    ap.add_argument("--repeats", type=int, default=5, help="repeat opens")
    ap.add_argument("--runs", type=int, default=3, help="RETR passes")
    args = ap.parse_args()
    if args.open_mib:
        bench_open(args.open_mib, args.repeats)
    if args.retr_mib:
        bench_retr("mixed", lambda p: generate_mixed(p, args.retr_mib << 20), args.runs)
    if args.small_mib:
        # many_mbox writes ~10.2 KB a message.
        bench_retr("~10 KB", lambda p: many_mbox(p, (args.small_mib << 20) // 10_200), args.runs)


if __name__ == "__main__":
    main()
