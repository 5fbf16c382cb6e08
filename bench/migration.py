"""What keeping another server's UIDLs costs a maildrop (mail.uidl_source).

Builds an mbox of --messages messages as GNU Mailutils leaves them (an
X-UIDL and an X-UID header each) and times, in this process, the session
child's own work on it, with popd's ids only and with
`uidl_source: [x-uidl, dovecot]`: the first open (scan, base ids and, with
the sources, the one reading of the headers), a repeat open (index cache
and the remembered map) and the UIDL list.  Best and median of --repeats.

    /opt/popd/bin/python bench/migration.py [--messages 100000] [--repeats 5]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from popd.mail import maildrop  # noqa: E402
from popd.unix import logsetup  # noqa: E402


def make_mbox(path, count):
    with open(path, "wb") as f:
        for i in range(count):
            f.write(b"From bob@example.org Thu Dec  3 16:00:00 2026\n"
                    b"From: bob@example.org\nSubject: message %d\nMessage-ID: <m%d@example.org>\n"
                    b"X-UIDL: %032x.1796313403.%d\nX-UID: %d\n\nbody line\n\n"
                    % (i, i, i * 7919, i + 1, i + 1))


def session(path, state, sources):
    """(open seconds, UIDL seconds, first id)."""
    t0 = time.perf_counter()
    drop = maildrop.Maildrop(str(path), os.getuid(), str(state), uidl_source=sources).open()
    t1 = time.perf_counter()
    ids = drop.ids()
    t2 = time.perf_counter()
    drop.close()
    return t1 - t0, t2 - t1, ids[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logsetup.log.level = logsetup.WARNING
    base = Path(tempfile.mkdtemp(prefix="popd-bench-migration-"))
    try:
        path = base / "mbox"
        make_mbox(path, args.messages)
        print(f"{args.messages} messages, {path.stat().st_size / 2**20:.1f} MiB")
        for sources in (("popd",), ("x-uidl", "dovecot", "popd")):
            first, repeat, uidl = [], [], []
            for _ in range(args.repeats):
                state = base / "state"
                shutil.rmtree(state, ignore_errors=True)
                (state / str(os.getuid())).mkdir(parents=True)
                opened, listed, sample = session(path, state, sources)
                first.append(opened)
                opened, listed, _ = session(path, state, sources)
                repeat.append(opened)
                uidl.append(listed)
            row = "  ".join(f"{name} {1000 * min(v):7.1f} / {1000 * statistics.median(v):7.1f} ms"
                            for name, v in (("first open", first), ("repeat open", repeat),
                                            ("UIDL", uidl)))
            print(f"{'+'.join(sources):20} {row}  (best / median; id 1: {sample})")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
