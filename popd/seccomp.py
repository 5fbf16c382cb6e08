"""The fronts' seccomp filter: the system calls a front may make, no more.

Runs in: the front, applied right after privileges.sandbox_front() and
privileges.limit_resources() (front.run), before the front reads a byte
from a client.  The supervisor only asks, at startup, whether the filter
can be had (startup_problem) and says so in one log line if not.

Why: every front runs as the same login_user, so without a filter a
compromised front could signal every other front (kill(2) checks only
the uid), and it still holds the kernel's whole system-call surface:
sockets to reach the network or local services, exec, io_uring, bpf...
The chroot, the uid and the empty capability sets close the file system
and the privileged calls; this filter closes the rest.

Policy:
  - Default: ERRNO(EPERM) for every call not allowed below.  Not KILL: a
    refused call then fails like any other OS error, so a front that
    meets one (a popd bug or an attack) logs through its channel and
    exits instead of vanishing without a word.
  - ALLOWED is exactly what fronts were seen to call after their sandbox
    (strace -f over tests/system: cleartext, STLS and implicit-TLS logins,
    failed and refused logins, abusive input, timeouts, the TLS pipe with
    RETR), plus calls that the C library or the kernel make on popd's
    behalf depending on the allocation pattern or the machine (MEMORY,
    CLOCKS, SIGNALS) and the glibc spellings of select().
  - Calls that could reach another process are allowed only with the
    arguments fronts use: ioctl only FIONBIO (FIOSETOWN or SIOCSPGRP
    would have the kernel send SIGIO to any pid of the same uid); no
    fcntl at all (F_SETOWN: the same); socketpair only AF_UNIX (the TLS
    pipe); setsockopt only TCP_NODELAY; prctl only PR_SET_NAME (the
    process title); mmap and mprotect never with PROT_EXEC, so no new
    machine code can be mapped.
  - A call through another ABI (int 0x80, x32) kills the process: only
    injected code makes one.
DENIED lists what matters most among the refused calls; every one of
them is refused by the default, and the tests try them.

pyseccomp (ctypes over the system's libseccomp.so.2) is optional:
`pip install popd[seccomp]`.  It is imported here, at module level, so
libseccomp is loaded in the supervisor before any fork and before any
chroot; loading the filter reads no file.
"""
import errno
import mmap
import socket

from .logsetup import log

INSTALL_PYSECCOMP = "install pyseccomp (pip install popd[seccomp])"
INSTALL_LIBSECCOMP = "install libseccomp (Debian: apt-get install libseccomp2)"
try:
    import pyseccomp
    _MISSING, _FIX = None, None
except ImportError as e:
    pyseccomp = None
    _MISSING, _FIX = f"ImportError: {e}", INSTALL_PYSECCOMP
except (OSError, RuntimeError) as e:    # pyseccomp is there, libseccomp.so.2 is not
    pyseccomp = None
    _MISSING, _FIX = f"{type(e).__name__}: {e}", INSTALL_LIBSECCOMP

# linux/sockios.h and asm-generic/ioctls.h; prctl.h.
FIONBIO = 0x5421
PR_SET_NAME = 15

# Seen in fronts under strace, grouped by what they are for.
IO = ["read", "write", "recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "close"]
WAIT = ["pselect6", "select"]          # select.select(): glibc uses either
SOCKET_INFO = ["getsockname", "getpeername", "getsockopt"]   # socket(fileno=), ssl
MISC = ["getpid", "getrandom", "brk", "exit_group", "exit"]  # OpenSSL, os.urandom
# Not seen in the tests, but made by the C library or the kernel rather
# than by popd, depending on allocation sizes and the machine: the
# allocator's big blocks, the vDSO's fallback, the return from a signal
# handler and the restart of a call interrupted by SIGSTOP/SIGCONT.
MEMORY = ["munmap", "mremap", "madvise"]
CLOCKS = ["clock_gettime", "gettimeofday", "clock_nanosleep", "nanosleep"]
SIGNALS = ["rt_sigreturn", "restart_syscall"]
ALLOWED = IO + WAIT + SOCKET_INFO + MISC + MEMORY + CLOCKS + SIGNALS
# Allowed with these arguments only (see the docstring); built in _rules().
CONDITIONAL = ["ioctl", "socketpair", "setsockopt", "prctl", "mmap", "mprotect"]

# Refused (by the default action; listed so tests and readers see them):
DENIED = [
    # other processes: signals, tracing, memory, fds
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "ptrace",
    "process_vm_readv", "process_vm_writev", "kcmp",
    # new programs and processes (RLIMIT_NPROC is 0 as well)
    "execve", "execveat", "fork", "vfork", "clone", "clone3",
    # files (the chroot is empty, but /proc-less tricks need no path)
    "open", "openat", "openat2", "creat", "mknod", "mknodat", "symlink",
    "link", "unlink", "rename", "chmod", "fchmod", "chown", "fchown",
    "fcntl", "memfd_create", "name_to_handle_at", "open_by_handle_at",
    # the network and local services
    "socket", "connect", "bind", "listen", "accept", "accept4",
    # credentials and isolation
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setfsuid", "setfsgid", "setgroups", "capset", "chroot", "pivot_root",
    "mount", "umount2", "unshare", "setns",
    # kernel attack surface a front never needs
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "userfaultfd", "seccomp",
    "init_module", "finit_module", "kexec_load", "reboot", "personality",
]


class SeccompError(Exception):
    """The filter was required and could not be loaded."""


def _rules(f):
    allow = pyseccomp.ALLOW
    for name in ALLOWED:
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if nr == -1:                    # unknown here (select on arm64)
            continue
        f.add_rule(allow, nr)
    arg = pyseccomp.Arg
    f.add_rule(allow, "ioctl", arg(1, pyseccomp.EQ, FIONBIO))
    f.add_rule(allow, "socketpair", arg(0, pyseccomp.EQ, socket.AF_UNIX))
    f.add_rule(allow, "setsockopt", arg(1, pyseccomp.EQ, socket.IPPROTO_TCP),
               arg(2, pyseccomp.EQ, socket.TCP_NODELAY))
    f.add_rule(allow, "prctl", arg(0, pyseccomp.EQ, PR_SET_NAME))
    for name in ("mmap", "mprotect"):
        f.add_rule(allow, name, arg(2, pyseccomp.MASKED_EQ, mmap.PROT_EXEC, 0))


def build():
    """The filter, not loaded yet."""
    f = pyseccomp.SyscallFilter(pyseccomp.ERRNO(errno.EPERM))
    f.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    _rules(f)
    return f


def startup_problem(mode):
    """For the supervisor: None if fronts will get the filter (or mode is
    off), else the one line that says why not and how to fix it."""
    if mode == "off":
        return None
    if pyseccomp is None:
        reason, fix = _MISSING, _FIX
    elif not _kernel_supports_seccomp():
        reason = "the kernel has no seccomp support"
        fix = "use a kernel built with CONFIG_SECCOMP_FILTER"
    else:
        try:
            build()                     # every rule resolves on this system
            return None
        except OSError as e:
            reason, fix = f"libseccomp refused the filter: {e}", INSTALL_LIBSECCOMP
    return f"seccomp filter for fronts unavailable: {reason}; {fix}"


def _kernel_supports_seccomp():
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return True                     # no /proc: let the load decide


def confine_front(mode):
    """Load the filter into this process (a front, already sandboxed).
    `mode` is login_seccomp: required (failing to load raises SeccompError,
    and the front exits), optional (a failure is logged and the front goes
    on, as the supervisor announced), off.  Returns what happened."""
    if mode == "off":
        return "off"
    if pyseccomp is None:
        if mode == "required":          # the supervisor refuses to start first
            raise SeccompError(f"seccomp unavailable: {_MISSING}")
        return "unavailable"
    try:
        build().load()
    except OSError as e:
        if mode == "required":
            raise SeccompError(f"cannot load the seccomp filter: {e}") from None
        log.warning("front: cannot load the seccomp filter: %s; going on "
                    "without it (login_seccomp: optional)", e)
        return "failed"
    return "loaded"

