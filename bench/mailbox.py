"""Mailbox figures through the real daemon: open + STAT (+ UIDL) of a big
mbox, and RETR throughput of a 200 MiB mbox over plain TCP, every byte
checked against an independent reference transform.

Run as root from the repository:
    /opt/popd/bin/python bench/mailbox.py [--open-mib 1024] [--retr-mib 200]
"""
import argparse
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.mbox_scan import generate  # noqa: E402
from tests.daemon import USERS, Daemon  # noqa: E402


def expected_messages(data):
    """Reference transform, independent of popd.mbox: split on "\\nFrom ",
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


def bench_open(mib):
    with Daemon() as d:
        path = d.spool / "alice"
        t = time.perf_counter()
        n = generate(str(path), mib << 20)
        os.chown(path, USERS["alice"][1], USERS["alice"][1])
        print(f"open: generated {path.stat().st_size / 1e6:.0f} MB, {n} messages "
              f"in {time.perf_counter() - t:.1f} s")
        with open(path, "rb") as f:                      # warm page cache
            while f.read(8 << 20):
                pass
        for label in ("first open", "repeat open"):
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
            assert len(ids) == n and stat.split()[1] == str(n).encode()
            c.cmd(b"QUIT")
            print(f"{label}: PASS->+OK {1000 * (t1 - t0):.0f} ms, PASS->STAT "
                  f"{1000 * (t2 - t0):.0f} ms, UIDL {1000 * (t3 - t2):.0f} ms")


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


def bench_retr(mib, runs):
    with Daemon() as d:
        path = d.spool / "bob"
        n = generate_mixed(str(path), mib << 20)
        os.chown(path, USERS["bob"][1], USERS["bob"][1])
        expected = expected_messages(path.read_bytes())
        assert len(expected) == n
        total = sum(len(e) - 3 for e in expected)
        best = None
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
            rate = total / elapsed / 1e6
            print(f"RETR: {n} messages, {total / 1e6:.1f} MB in {elapsed:.2f} s = "
                  f"{rate:.0f} MB/s (every byte checked; client used "
                  f"{client_cpu / elapsed:.2f} cores)")
            best = max(best or 0, rate)
        print(f"RETR best of {runs}: {best:.0f} MB/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--open-mib", type=int, default=1024)
    ap.add_argument("--retr-mib", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.open_mib:
        bench_open(args.open_mib)
    if args.retr_mib:
        bench_retr(args.retr_mib, args.runs)


if __name__ == "__main__":
    main()
