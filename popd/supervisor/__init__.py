"""The supervisor: the root process, and what it forks before any drop.

Every file here runs as root (uid 0, full capabilities), and the
supervisor never reads a byte a client sent; behind a load balancer it
reads the balancer's PROXY header, from trusted peers only:

- loop.py            the main loop: signals deferred to it, accept, admit,
                     hand over, reap, stop
- reload.py          SIGHUP: the new configuration, broker and TLS context
- listeners.py       bind the listening sockets, before anything is forked
- admission.py       the global and per-address caps and the canned refusal
- proxied.py         proxy listeners: the trusted-peer check, the header's
                     bounded non-blocking read, then admission
- proxy_header.py    the PROXY v1/v2 header parser (pure, fuzzed)
- control.py         the control socket: peer check, request vocabulary,
                     non-blocking answers for popd ctl
- stats.py           the counters, and the status/who/stats/metrics answers
- pool.py            slot records: idle/busy, spawn pacing, crash back-off
- sessions.py        one session per maildrop; stopped or stalled sessions
- spawner.py         the spawner process (root), which forks the slots
- broker_link.py     start, watch and replace the auth broker
- exporter_link.py   fork the metrics exporter, answer its one question,
                     fork another if it dies (metrics.listen)
- trusted_files.py   owner/mode/symlink checks of the files popd trusts
- startup_checks.py  those checks over the configuration, at start, SIGHUP
                     and --check-config
- daemonize.py       the launcher's detach (fork, pid file, readiness)

Outside this package, root runs the spawner's preparation before it forks
any slot, slot/warmup.py (first-use tables and a TLS handshake with itself
over a socketpair, no byte from outside) and unix/malloc.py (pymalloc's
free blocks taken), and only the first steps of each process it forks, up
to the drop: broker/broker.py (the broker), slot/child.py (a slot's
child), slot/front.py (its front, which chroots) and exporter/server.py
(the metrics exporter, which chroots too); each drop is
unix/privileges.py's.  The lock helper (slot/lock_helper.py) is forked by
the child after its own drop and never runs as root.
"""
