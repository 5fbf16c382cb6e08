"""Every fixed number in popd, each with the RFC or the threat it answers.

Runs in: all processes.  Numbers an operator may tune live in config.py
(with their defaults and ranges); the ones here are protocol facts or
internal bounds that no site should need to change.
"""

# RFC 2449 section 4: a command line may be up to 255 octets including CRLF.
MAX_COMMAND_LINE = 255
# RFC 2449 section 4 / RFC 5034: responses, including CRLF, are at most 512
# octets.  Every reply popd writes is checked against this.
MAX_RESPONSE_LINE = 512
# RFC 5034: a SASL response line may be longer than a command (base64 of
# authzid NUL authcid NUL password); 2 KiB bounds it.
MAX_SASL_LINE = 2048
# Longest login name and password accepted from a client.  Dovecot's
# passwd-file allows more, but nobody types a 1 KiB password into a mail
# client, and the bound keeps hashing cost predictable.
MAX_LOGIN = 64
MAX_SECRET = 1024

# IPC (ipc.py): one frame per SEQPACKET datagram, never larger.
MAX_FRAME = 4096
# What a client pipelined past PASS, which a cleartext front hands the
# child with the socket (ipc.py HANDOVER): one frame's worth, so a front
# never buffers more than this (pop3/authorization.py).
MAX_LEFTOVER = MAX_FRAME - 200

# The supervisor reads nothing from clients; the canned refusal is all it
# ever writes to one.  RFC 3206 [SYS/TEMP]: try again later.
REFUSAL_LINE = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"

# Connections admitted but waiting for a free slot (a slot is being forked):
# bounded so a burst cannot grow the supervisor's memory.
MAX_PENDING_CONNECTIONS = 256

# A session tells the supervisor how it goes (bytes sent, RETRs, DELEs, for
# `popd ctl who` and the counters) at most this often, in seconds: one
# datagram a second whatever a client pipelines.  The broker's counters
# go up at the same pace.
PROGRESS_INTERVAL = 1.0

# A session that sent a large reply gives its freed heap back to the kernel
# once the client has been silent this long (seconds), and a TLS front its
# pipe buffers and freed heap: sessions mostly sit idle, and a client
# fetching message after message never waits this long between two, so its
# reads keep their warm memory (unix/malloc.py, slot/tls_pipe.py).
IDLE_AFTER = 1.0

# The control socket (supervisor/control.py): a request is one short line,
# a few callers at a time, each answered or dropped within a few seconds,
# so `popd ctl` can never tie up the supervisor's loop.
CONTROL_REQUEST_MAX = 256
MAX_CONTROL_CLIENTS = 8
CONTROL_TIMEOUT = 5.0

# The metrics exporter (exporter/): an HTTP request is a request line and a
# few headers (Prometheus sends five), so 4 KiB; a few scrapers at a time,
# each done within a few seconds, so a client that connects and stalls
# (or a flood of them) holds nothing for long.  Its fds: stdio, the
# listening socket, the supervisor's channel, the clients, the log.
METRICS_REQUEST_MAX = 4096
MAX_METRICS_CLIENTS = 8
METRICS_CLIENT_TIMEOUT = 5.0
EXPORTER_FILES = 16
# The supervisor renders the text in a few milliseconds; an exporter that
# waits longer than this for it answers 503 rather than hold its clients.
METRICS_ANSWER_TIMEOUT = 2.0
# The text has a fixed set of series (no per-user or per-address labels),
# about 4 KiB; it travels in MAX_FRAME pieces and an exporter refuses more
# than this in all.
METRICS_TEXT_MAX = 64 * 1024
# However often the exporter asks, the supervisor renders the text at most
# this often (seconds) and otherwise sends the last one: a scraper flood
# costs root a send per scrape, not a render.
METRICS_RENDER_INTERVAL = 0.5
# An exporter that died is forked again after this many seconds (a crash
# loop costs one fork per interval, never a busy loop).
EXPORTER_RESTART_DELAY = 5.0

# PROXY protocol (listen[].proxy, supervisor/proxy_header.py).  The header
# comes from the operator's balancer, but root reads it, so it is bounded
# like anything else: the spec's receive buffer (a v1 line is at most 107
# bytes, a v2 header with TCP6 addresses 52, room left for TLVs); the
# balancer writes it at connect, so a few seconds is generous; and the
# connections still owing one are capped (past the cap: closed unread).
PROXY_HEADER_MAX = 536
PROXY_HEADER_TIMEOUT = 5.0
MAX_PROXY_PENDING = 256

# Crash-loop back-off for slots that die before serving anyone:
# first retry after 0.1 s, doubling, capped at 10 s.
SPAWN_BACKOFF_MIN = 0.1
SPAWN_BACKOFF_MAX = 10.0
# At most this many slots are forked per main-loop turn, so a mass exit
# cannot make the supervisor spend a long stretch forking instead of
# admitting clients.
SPAWN_BURST = 8
# Missing spare slots are forked together, at most this long after the
# first goes missing (supervisor/loop.py, spawn_slots, says why).
SPAWN_BATCH_DELAY = 0.05

# Grace after the login deadline before the supervisor SIGKILLs a front that
# did not end its own connection: the front enforces the deadline itself;
# this is the backstop for a front that has been subverted.
FRONT_KILL_GRACE = 5.0

# mbox: the child waits this long for the fcntl lock before answering
# [IN-USE] to PASS.
MAILBOX_LOCK_WAIT = 10.0
# The lock helper answers each request at once (one attempt, no waiting:
# the child waits); a helper silent for this long is stuck or stopped, and
# the child gives up on it ([IN-USE]) rather than hang its session.
LOCK_HELPER_IO_TIMEOUT = 5.0
# A closed helper removes its lock and exits at once; one still there
# after this long is killed.
LOCK_HELPER_EXIT_WAIT = 2.0

# Sessions as the supervisor watches them (sessions.py).  A granted child
# runs as the mailbox owner, who may stop it; these bounds do not trust it.
# A new login to a maildrop whose previous session is still exiting (QUIT,
# then an immediate new login) waits this long for it, then gets [IN-USE].
SESSION_HANDOFF_WAIT = 2.0
# How often each granted child's /proc/<pid>/status is sampled.
SESSION_WATCH_INTERVAL = 2.0
# A session child seen stopped (state T) this long is killed: popd never
# stops one, so its owner did, to keep the slot.
SESSION_STOPPED_GRACE = 5.0
# A session child whose context switches have not moved for idle_timeout
# plus this long is killed: it would have woken for its own idle timeout.
SESSION_STALL_GRACE = 10.0

# popd.yaml (config.py): a real one is a few KiB; a longer file is refused
# rather than read in part.
CONFIG_FILE_MAX = 1 << 20

# Seconds of limits.login_deadline that limits.auth_delay_max must leave
# free (config.py checks it): the TLS handshake, the client's USER/PASS and
# the hashing happen inside the same deadline.
LOGIN_HEADROOM = 10

# The pam backend: an unknown user's answer waits the median of the last
# PAM_FAILURE_SAMPLES wrong-password answers PAM gave (pam_unix answers an
# unknown name far sooner), or PAM_FAILURE_DEFAULT seconds before any.
PAM_FAILURE_SAMPLES = 32
PAM_FAILURE_DEFAULT = 0.08


# -- bounds on processes popd starts and files it reads ----------------------
# A slot's child must report SLOT_READY this long after its fork, or the
# supervisor kills it and forks another (a child stuck before it serves
# would hold a slot forever).
SLOT_START_TIMEOUT = 30.0
# The auth broker must answer its first frame this long after its fork:
# hashing workers warm up their schemes first, argon2 included.
BROKER_START_TIMEOUT = 60.0
# The spawner reaps exited slots at least this often (seconds): until then
# they are zombies, each holding a pid.
SPAWNER_REAP_INTERVAL = 1.0
# The supervisor gives up on a spawner answer after this long (a fork
# takes about 1 ms), and kills a spawner that does not leave at once.
SPAWNER_ANSWER_TIMEOUT = 5.0
# File descriptors (RLIMIT_NOFILE) of a front: stdio (/dev/null), its two
# channels, the client and the socketpair of the TLS pipe; and of a
# logged-in session: stdio, its channel, the client, the mbox, the session
# lock, the journal and its temporaries, the lock helper.  Anything that
# leaks descriptors fails early instead of exhausting the host's.
FRONT_FILES = 16
SESSION_FILES = 32
# Log frames a front may send its child in one connection; more are
# dropped (a subverted front must not fill the log).
MAX_FRONT_LOG_LINES = 50
# How much of an overlong command line is read and thrown away before the
# connection is closed instead: enough for a confused client's line, not
# an unbounded stream.
MAX_DRAIN = 64 * 1024
# The passwd file popd reads whole: a million argon2 users is about 150 MB,
# and sites that large belong in a directory service.  The bound stops a
# mistaken path (a log file, a disk image) from eating the broker's memory.
PASSWD_FILE_MAX = 64 * 1024 * 1024
# A dot-lock older than this (and an mbox unchanged for as long) is stale
# and may be broken: Dovecot's mbox_dotlock_change_timeout rule, and twice
# the longest a delivery holds the lock in practice.
DOTLOCK_STALE_AFTER = 120.0
