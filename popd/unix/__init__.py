"""Kernel and library interfaces, no policy of their own.

- privileges.py  the drops: setgroups/setresgid/setresuid, capabilities,
                 no_new_privs, rlimits; each checked after it is made
- process.py     what every forked process does first (fds, signals)
- seccomp.py     the fronts' system call filter
- tls.py         build and reload the SSLContext; the handshake
- logsetup.py    the logger, its destinations, sanitize()
- proctitle.py   process titles from a fixed vocabulary
- malloc.py      the allocators' knobs: pymalloc's free blocks taken before
                 forking, the heap trimmed once a client is idle
"""
