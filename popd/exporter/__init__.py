"""The metrics exporter: `metrics.listen` served over HTTP.

Runs in: its own process, forked by the supervisor when metrics.listen is
set, then chrooted to login_chroot as login_user with no capabilities,
NoNewPrivs, not dumpable, few fds, a memory cap, no forking, and the
fronts' seccomp filter plus accept4(2).  It holds two sockets: the
listening socket the supervisor bound, and its channel to the supervisor,
over which it can only ask for the metrics text (ipc.py: METRICS_ASK,
METRICS_TEXT).  So the HTTP parsing a scraper drives runs where a bug
reaches nothing: no mail, no passwords, no other process's numbers but
the supervisor's counters, which are the answer anyway.

- http.py     the request parser and the answers (pure, fuzzed)
- server.py   the process: its drop, its loop, its question to the supervisor
"""
