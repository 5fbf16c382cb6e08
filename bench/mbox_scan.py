#!/usr/bin/env python3
"""Benchmark popd.mail.mbox.scan (and RETR streaming) on a generated mbox.

Generates a deterministic mbox of the requested size (about 10 KiB per
message, so 1 GiB is ~100,000 messages; bodies of ~70-byte lines with
``>From `` quoting, dot lines and a few CRLF messages), warms the page cache,
and prints the best of ``--runs`` scans as messages/s and MiB/s.

    python bench/mbox_scan.py --size-mib 200
    python bench/mbox_scan.py --size-mib 1024 --path /tmp/big.mbox --keep

With ``--path`` an existing file is reused (pass ``--regen`` to rebuild it);
without it a temporary file is created and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from popd.mail import mbox  # noqa: E402

WORDS = (b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do "
         b"eiusmod tempor incididunt ut labore et dolore magna aliqua From "
         b"the mail server . quoted text").split()


def _templates(rng: random.Random, count: int = 256) -> list[bytes]:
    out = []
    for t in range(count):
        target = rng.randint(1500, 18500)
        lines = []
        size = 0
        while size < target:
            r = rng.random()
            if r < 0.02:
                line = b">From someone at the office"
            elif r < 0.03:
                line = b"." * rng.randint(1, 3)
            elif r < 0.05:
                line = b""
            else:
                words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
                line = b" ".join(words)
                if line.startswith(b"From "):
                    line = b">" + line   # mboxrd/MDA quoting
            lines.append(line)
            size += len(line) + 1
        eol = b"\r\n" if t % 32 == 0 else b"\n"
        out.append(eol.join(lines) + eol)
    return out


def generate(path: str, size: int, seed: int = 1939) -> int:
    """Write a deterministic mbox of at least ``size`` bytes; return count."""
    rng = random.Random(seed)
    templates = _templates(rng)
    n = 0
    written = 0
    with open(path, "wb", buffering=4 << 20) as f:
        while written < size:
            body = templates[rng.randrange(len(templates))]
            msg = (b"From sender%d@example.org Mon Jan  1 00:00:%02d 2024\n"
                   b"Return-Path: <sender%d@example.org>\n"
                   b"Message-ID: <%d.bench@example.org>\n"
                   b"From: Sender <sender%d@example.org>\n"
                   b"To: user@example.org\n"
                   b"Subject: benchmark message %d\n\n"
                   % (n % 97, n % 60, n % 97, n, n % 97, n)) + body + b"\n"
            f.write(msg)
            written += len(msg)
            n += 1
    return n


def warm(fd: int, size: int) -> None:
    pos = 0
    while pos < size:
        pos += len(os.pread(fd, 8 << 20, pos)) or size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=200)
    ap.add_argument("--path")
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=mbox.SCAN_CHUNK)
    ap.add_argument("--retr", type=int, default=200,
                    help="also stream this many messages (0: skip)")
    args = ap.parse_args(argv)

    size = args.size_mib << 20
    tmp = args.path is None
    path = args.path or tempfile.mkstemp(prefix="popd-bench-",
                                         suffix=".mbox")[1]
    try:
        if tmp or args.regen or not os.path.exists(path):
            t = time.perf_counter()
            n = generate(path, size)
            print(f"generated {path}: {os.path.getsize(path)} bytes, "
                  f"{n} messages in {time.perf_counter() - t:.1f} s")
        fd = os.open(path, os.O_RDONLY)
        try:
            fsize = os.fstat(fd).st_size
            warm(fd, fsize)
            best = float("inf")
            index = None
            for _ in range(args.runs):
                t = time.perf_counter()
                index = mbox.scan(fd, chunk=args.chunk)
                best = min(best, time.perf_counter() - t)
            assert index is not None
            mib = fsize / (1 << 20)
            print(f"scan: {len(index)} messages, {fsize} bytes, "
                  f"{index.total_octets()} octets; best of {args.runs}: "
                  f"{best:.3f} s = {len(index) / best:,.0f} messages/s, "
                  f"{mib / best:,.0f} MiB/s (chunk {args.chunk})")
            if args.retr:
                step = max(1, len(index) // args.retr)
                picks = range(0, len(index), step)
                total = 0
                t = time.perf_counter()
                for i in picks:
                    for piece in mbox.iter_message(fd, index, i):
                        total += len(piece)
                dt = time.perf_counter() - t
                print(f"retr: {len(picks)} messages, {total} bytes in "
                      f"{dt:.3f} s = {total / dt / (1 << 20):,.0f} MiB/s")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"max RSS {rss / 1024:.0f} MiB")
        finally:
            os.close(fd)
    finally:
        if tmp and not args.keep:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
