"""Logins/s through HAProxy (PROXY v2, leastconn) in front of two popd
nodes on one spool and state directory, against one node direct and one
node through HAProxy: the cost of the balancer hop and the header, and
what a second node gives on this machine.

Run as root from the repository (needs Debian's haproxy):
    /opt/popd/bin/python bench/load_balancer.py [--seconds 10] [--concurrency 16]
Both nodes and haproxy share this machine's cores, so two nodes cannot
beat one here by more than the CPU left idle; on separate hosts they
would add up.  The workload is bench/foundation.py's: USER/PASS/STAT/QUIT,
SHA512-CRYPT with 5000 rounds, one account per client.
"""
import argparse
import asyncio
import shutil
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.foundation import BENCH_USERS, MBOX, login_rate  # noqa: E402
from tests.daemon import USERS, Daemon  # noqa: E402
from tests.load_balancer import Balancer, proxy_node, shared_dirs  # noqa: E402

LIMITS = {"max_children": 128, "spare_children": 16, "max_per_ip": 128}


def mailboxes(spool):
    for user, (_, uid, gid) in BENCH_USERS.items():
        path = spool / user
        path.write_bytes(MBOX)
        shutil.chown(path, uid, gid)
        path.chmod(0o600)


def measure(label, port, args):
    target = types.SimpleNamespace(host="127.0.0.1", port=port)
    count, elapsed, lat = asyncio.run(login_rate(target, args.seconds, args.concurrency))
    print(f"{label:34s} {count / elapsed:7.1f} logins/s  (p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
          f"p99 {lat[int(len(lat) * .99)] * 1000:.1f} ms, {count} logins)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    users = {**USERS, **BENCH_USERS}
    print(f"{args.concurrency} clients, USER/PASS/STAT/QUIT, {args.seconds:.0f} s each")
    with Daemon(limits=LIMITS, users=users) as d:
        mailboxes(d.spool)
        d.wait_for_pids("child idle", 16, timeout=30)
        measure("1 node, direct", d.port, args)
    base, spool, state = shared_dirs()
    try:
        mailboxes(spool)
        a = proxy_node(spool, state, users=users, limits=LIMITS)
        b = proxy_node(spool, state, users=users, limits=LIMITS)
        with a, b, Balancer([("a", a), ("b", b)]) as lb:
            for d in (a, b):
                d.wait_for_pids("child idle", 16, timeout=30)
            measure("1 node through haproxy (PROXY v2)", lb.ports["a"], args)
            measure("2 nodes through haproxy", lb.port, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
