"""Which objects a session child copies: the pages it writes after the
fork, charged to what lives on them.

Runs in: one benchmark process, as root (/proc/self/pagemap shows page
frame numbers to CAP_SYS_ADMIN only):

    /opt/popd/bin/python bench/cow_pages.py [--messages 20] [--top 25]

It builds what the spawner's image holds (the supervisor's imports, a
loaded configuration, gc.collect() and gc.freeze() as at start), records
every object it can reach (gc-tracked objects and their direct referents:
strings, numbers, code objects) with address, size and a label, and the
page frame of every present page of the writable mappings: the heap, the
anonymous ones (pymalloc arenas) and the interpreter's data.  It runs the
spawner's warm-up (slot/warmup.py, without TLS: no context here) and
takes pymalloc's free blocks as the spawner does (unix/malloc.py).  Then
it forks, and the child does what a slot's child does once the grant is in:
becomes the owner (a numeric uid), opens a maildrop (Maildrop.open on a
sample mbox, a state directory as the supervisor prepares it) and serves
a POP3 session (ChildSession over a socketpair, driven by the parent:
STAT, LIST, UIDL, RETR 1, TOP 2 0, DELE 3, NOOP, RSET, QUIT), then reads
its page frames again, after each of three phases (becoming the owner,
opening the maildrop, the session).  A page whose frame changed was
copied on write; each is charged to the objects on it, by label (the
module, for code objects, functions and module dicts), for the whole
run and for the phase that copied it first.  A copied page with no recorded
object holds allocator state, objects made after the freeze, or free
space reused.  It is an approximation of a real child's (no front, no
broker, no fork of its own), good for ranking where copies come from.
"""
import argparse
import bisect
import collections
import ctypes
import gc
import os
import re
import socket
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGE = os.sysconf("SC_PAGE_SIZE")
_ENTRY = struct.Struct("Q")
OWNER_UID = 61990


def writable_ranges():
    """(start, end, name) of the private writable mappings worth watching."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            perms, path = parts[1], (parts[5].strip() if len(parts) > 5 else "")
            if not perms.startswith("rw") or path.startswith("[stack") or path.startswith("[v"):
                continue
            if path and path != "[heap]" and not re.search(r"/python3(\.\d+)?$", path):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end, path or "anonymous"))
    return out


def read_pagemap(ranges, f, buf):
    """The pagemap entries of `ranges` into `buf`, which was allocated
    beforehand: reading allocates nothing that could land on (and so
    copy) a page being measured.  `f` is /proc/self/pagemap opened as
    root (the kernel shows frame numbers to whoever opened it with
    CAP_SYS_ADMIN, whatever the process is now)."""
    view, pos = memoryview(buf), 0
    for start, end, _ in ranges:
        size = (end - start) // PAGE * 8
        os.preadv(f.fileno(), [view[pos:pos + size]], start // PAGE * 8)
        pos += size


def frames(ranges, buf):
    """{page address: frame number} of the present pages in `buf`."""
    out, pos = {}, 0
    for start, end, _ in ranges:
        for i in range((end - start) // PAGE):
            (entry,) = _ENTRY.unpack_from(buf, pos)
            pos += 8
            if entry >> 63:
                out[start + i * PAGE] = entry & ((1 << 55) - 1)
    return out


def pagemap_size(ranges):
    return sum((end - start) // PAGE * 8 for start, end, _ in ranges)


def label(obj, module_dicts):
    kind = type(obj).__name__
    if kind == "code":
        return "code " + _module_of(obj.co_filename)
    if kind == "function":
        return f"function {obj.__module__}"
    if kind == "dict" and id(obj) in module_dicts:
        return f"module dict {module_dicts[id(obj)]}"
    if kind in ("type", "ABCMeta", "EnumType"):
        return "class"
    return kind


POPD_DIR = str(Path(__file__).resolve().parent.parent / "popd") + "/"


def _module_of(filename):
    if filename.startswith(POPD_DIR):
        return "popd." + filename[len(POPD_DIR):-3].replace("/", ".")
    return "stdlib/other " + os.path.basename(filename)


def object_map():
    """Sorted addresses, and (end, label) per address, of what the image holds."""
    module_dicts = {id(m.__dict__): name for name, m in list(sys.modules.items())
                    if getattr(m, "__dict__", None) is not None}
    seen = {}
    for obj in gc.get_objects():
        for o in [obj] + gc.get_referents(obj):
            if id(o) not in seen:
                try:
                    seen[id(o)] = (id(o) + sys.getsizeof(o), label(o, module_dicts))
                except Exception:             # noqa: B902 - an odd object: skip it
                    pass
    addresses = sorted(seen)
    return addresses, [seen[a] for a in addresses]


def charge(copied, addresses, spans):
    """{label: pages} for the copied pages (a page shared by several labels
    is split between them), and the number with no recorded object."""
    out, unknown = collections.Counter(), 0
    for page in sorted(copied):
        i = bisect.bisect_left(addresses, page)
        # An object that starts before the page may run into it.
        labels = set()
        if i > 0 and spans[i - 1][0] > page:
            labels.add(spans[i - 1][1])
        while i < len(addresses) and addresses[i] < page + PAGE:
            labels.add(spans[i][1])
            i += 1
        if not labels:
            unknown += 1
        for name in labels:
            out[name] += 1 / len(labels)
    return out, unknown


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    import popd.cli  # noqa: F401  (what the launcher and the supervisor import)
    import popd.supervisor.loop  # noqa: F401
    from popd import config
    from popd.mail.maildrop import Maildrop
    from popd.pop3.transaction import ChildSession
    from popd.slot import warmup
    from popd.unix import malloc

    # A configuration of its own (tests/daemon.py would bring its imports
    # into the image being measured).
    base = Path(tempfile.mkdtemp(prefix="popd-cow-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "popd.yaml").write_text(
            "listen: [{address: 127.0.0.1, port: 1110}]\n"
            "user: 60010\ngroup: 60010\nlogin_user: 60011\nlogin_group: 60011\n"
            "broker_user: 60012\nbroker_group: 60012\n"
            f"mail: {{state_dir: {base}/state}}\n")
        cfg = config.load(str(base / "popd.yaml"))
        spool = base / "spool"
        spool.mkdir(mode=0o755)
        box = spool / "owner"
        box.write_bytes(b"".join(b"From a@b Thu Nov 26 10:00:00 2026\nSubject: m%d\n\n"
                                 b"body %d\n\n" % (i, i) for i in range(args.messages)))
        os.chown(box, OWNER_UID, OWNER_UID)
        state = Path(cfg.mail.state_dir)
        (state / str(OWNER_UID)).mkdir(parents=True, mode=0o700)
        os.chown(state / str(OWNER_UID), OWNER_UID, OWNER_UID)
        ours, theirs = socket.socketpair()
        gc.collect()
        addresses, spans = object_map()    # before the freeze: frozen objects are not listed
        gc.freeze()
        warmup.warm()                      # as the spawner does before it forks
        malloc.fill_free_blocks()
        ranges = writable_ranges()
        with open("/proc/self/pagemap", "rb") as f:
            buf = bytearray(pagemap_size(ranges))
            read_pagemap(ranges, f, buf)
            before = frames(ranges, buf)
        pid = os.fork()
        if pid == 0:
            ours.close()
            pagemap = open("/proc/self/pagemap", "rb", buffering=0)
            # One buffer per phase, made before any phase: new pages, not counted.
            phases = [(name, bytearray(pagemap_size(ranges)))
                      for name in ("becoming the owner", "opening the maildrop", "the session")]
            skip = set()
            for _, phase_buf in phases:
                start = ctypes.addressof(ctypes.c_char.from_buffer(phase_buf))
                skip.update(range(start // PAGE * PAGE, start + len(phase_buf) + PAGE, PAGE))
            code = 0
            try:
                gc.freeze()                       # as process.after_fork does
                os.setgroups([])
                os.setresgid(OWNER_UID, OWNER_UID, OWNER_UID)
                os.setresuid(OWNER_UID, OWNER_UID, OWNER_UID)
                read_pagemap(ranges, pagemap, phases[0][1])
                drop = Maildrop(str(box), OWNER_UID, cfg.mail.state_dir, None,
                                cfg.mail.uidl_source, cfg.mail.expire_days)
                drop.open()
                read_pagemap(ranges, pagemap, phases[1][1])
                session = ChildSession(theirs, cfg, drop, b"")
                session.serve()
                session.close()
                drop.close()
                read_pagemap(ranges, pagemap, phases[2][1])
                seen = set()
                for name, phase_buf in phases:
                    now = frames(ranges, phase_buf)
                    first = {p for p, f in before.items()
                             if now.get(p, f) != f and p not in skip and p not in seen}
                    seen |= first
                    table, unknown = charge(first, addresses, spans)
                    print(f"{name}: {len(first)} pages copied first in this phase; most: "
                          + ", ".join(f"{k} {v:.0f}" for k, v in table.most_common(6))
                          + f", no recorded object {unknown}")
                after = now
                copied = {p for p, f in before.items() if after.get(p, f) != f and p not in skip}
                new = len({p for p in after if p not in before and p not in skip})
                table, unknown = charge(copied, addresses, spans)
                by_mapping = collections.Counter()
                for p in copied:
                    for start, end, name in ranges:
                        if start <= p < end:
                            by_mapping[name.rsplit("/", 1)[-1]] += 1
                print(f"pages copied on write: {len(copied)} ({len(copied) * PAGE // 1024} kB); "
                      f"pages new since the fork: {new} ({new * PAGE // 1024} kB)")
                print("by mapping: " + ", ".join(f"{k} {v * PAGE // 1024} kB"
                                                 for k, v in by_mapping.most_common()))
                print(f"{'copied pages by what lives on them':60} {'pages':>7} {'kB':>7}")
                for name, pages in table.most_common(args.top):
                    print(f"  {name[:58]:58} {pages:7.1f} {pages * PAGE / 1024:7.0f}")
                print(f"  {'(no recorded object)':58} {unknown:7d} {unknown * PAGE // 1024:7d}")
            except BaseException:                 # noqa: B902 - report, then leave
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        theirs.close()
        reader = ours.makefile("rb")               # no greeting: the front said it
        for command in (b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 2 0", b"DELE 3", b"NOOP",
                        b"RSET", b"QUIT"):
            ours.sendall(command + b"\r\n")
            line = reader.readline()
            if line.startswith(b"+OK") and command in (b"LIST", b"UIDL", b"RETR 1", b"TOP 2 0"):
                while reader.readline() not in (b".\r\n", b""):
                    pass
        os.waitpid(pid, 0)
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
