"""The fronts' seccomp filter: the system calls a front may make, no more.

Runs in: the supervisor, once at startup before any fork (startup_problem
compiles the policy with libseccomp and keeps it as classic BPF bytes),
and the front, which installs those bytes right after
privileges.sandbox_front() and privileges.limit_resources() (front.run),
before it reads a byte from a client.  The metrics exporter (exporter/),
the other process that parses bytes from the network as login_user, gets
the same policy plus accept4(2) for its listening socket.

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

How: libseccomp (the system's libseccomp.so.2, through ctypes) turns the
rules into BPF in the supervisor, once; the program does not depend on
the configuration, so a reload keeps it.  Each front only hands the
bytes to prctl(PR_SET_SECCOMP) (privileges.install_seccomp): no libseccomp call, no file, no
compilation per login.  No Python binding (pyseccomp) either: importing
one costs every forked process ~2 MB (importlib.metadata, email,
ctypes.util and its subprocess), and its find_library runs ldconfig.
"""
import ctypes
import errno
import mmap
import os
import socket

from popd.unix import privileges
from popd.unix.logsetup import log

INSTALL_LIBSECCOMP = "install libseccomp (Debian: apt-get install libseccomp2)"

# linux/sockios.h and asm-generic/ioctls.h; prctl.h.
FIONBIO = 0x5421
PR_SET_NAME = 15

# Seen in fronts under strace, grouped by what they are for.
IO = ["read", "write", "recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "close"]
WAIT = ["pselect6", "select"]          # select.select(): glibc uses either
SOCKET_INFO = ["getsockname", "getpeername", "getsockopt"]   # socket(fileno=), ssl
MISC = ["getpid", "getrandom", "brk", "exit_group", "exit"]  # OpenSSL, os.urandom
# The allocator's big blocks, and an idle TLS pipe giving its buffers and
# freed heap back (madvise; slot/tls_pipe.py).  Then, not seen in the tests
# but made by the C library or the kernel rather than by popd, depending on
# the machine: the vDSO's fallback, the return from a signal handler and the
# restart of a call interrupted by SIGSTOP/SIGCONT.
MEMORY = ["munmap", "mremap", "madvise"]
CLOCKS = ["clock_gettime", "gettimeofday", "clock_nanosleep", "nanosleep"]
SIGNALS = ["rt_sigreturn", "restart_syscall"]
ALLOWED = IO + WAIT + SOCKET_INFO + MISC + MEMORY + CLOCKS + SIGNALS
# The exporter takes its scrapers from a socket the supervisor bound.
EXPORTER_ALLOWED = ["accept4"]
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

# seccomp.h (libseccomp's): actions, the bad-architecture attribute and
# the argument comparisons the rules use.
ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
ACT_EPERM = 0x00050000 | errno.EPERM           # SCMP_ACT_ERRNO(EPERM)
_FLTATR_ACT_BADARCH = 2
_CMP_EQ, _CMP_MASKED_EQ = 4, 7
# linux/filter.h: sizeof(struct sock_filter), and the kernel's bound.
_BPF_INSN = 8
_BPF_MAXINSNS = 4096


class _ArgCmp(ctypes.Structure):               # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


# The compiled filters (classic BPF), set by startup_problem() in the
# supervisor before any fork, so every front and exporter inherits them;
# None when login_seccomp is off or the filter could not be had.
program = None
exporter_program = None


class SeccompError(Exception):
    """The filter was required and could not be loaded."""


class Unavailable(Exception):
    """The filter cannot be had on this system: (reason, fix)."""


def _rules(extra=()):
    """(system call, argument conditions) for every allowed call, in the
    order they are added (the same order gives the same program)."""
    rules = [(name, ()) for name in ALLOWED + list(extra)]
    no_exec = [(2, _CMP_MASKED_EQ, mmap.PROT_EXEC, 0)]
    rules += [
        ("ioctl", [(1, _CMP_EQ, FIONBIO, 0)]),
        ("socketpair", [(0, _CMP_EQ, socket.AF_UNIX, 0)]),
        ("setsockopt", [(1, _CMP_EQ, socket.IPPROTO_TCP, 0),
                        (2, _CMP_EQ, socket.TCP_NODELAY, 0)]),
        ("prctl", [(0, _CMP_EQ, PR_SET_NAME, 0)]),
        ("mmap", no_exec),
        ("mprotect", no_exec),
    ]
    return rules


def _load_libseccomp():
    """libseccomp.so.2 by its soname, as the dynamic linker finds it (no
    ctypes.util.find_library: it runs ldconfig in a subprocess)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
            ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    except (OSError, AttributeError) as e:     # missing, or not a libseccomp
        raise Unavailable(f"cannot load libseccomp.so.2 ({e})", INSTALL_LIBSECCOMP) from None
    return lib


def _check(result, what):
    """libseccomp returns -errno."""
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")


def build(extra=()):
    """Compile the policy, with the calls in `extra` allowed too, with
    libseccomp for this machine's architecture; returns the classic BPF
    program as bytes.  Supervisor only."""
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(ACT_EPERM)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, ACT_KILL_PROCESS),
               "seccomp_attr_set(ACT_BADARCH)")
        for name, conditions in _rules(extra):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0 and not conditions:      # unknown here (select on arm64)
                continue
            args = (_ArgCmp * len(conditions))(*conditions)
            _check(lib.seccomp_rule_add_array(ctx, ACT_ALLOW, nr, len(conditions), args),
                   f"rule for {name}")
        # libseccomp 2.5 exports only to an fd.  A memfd, not a pipe: a
        # program larger than the pipe's buffer would block the write.
        fd = os.memfd_create("popd-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            bpf = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not bpf or len(bpf) % _BPF_INSN or len(bpf) > _BPF_MAXINSNS * _BPF_INSN:
        raise OSError(errno.EINVAL, f"seccomp_export_bpf wrote {len(bpf)} bytes")
    return bpf


def _kernel_problem():
    """Why this kernel cannot take a filter, or None."""
    err = privileges.seccomp_probe()
    if err == errno.EFAULT:
        return None
    if err == errno.EINVAL:
        return "the kernel has no seccomp filter support"
    return f"the kernel refuses seccomp filters ({os.strerror(err)})"


def startup_problem(mode):
    """For the supervisor, at startup and before any fork: compile the
    filter once and keep it in `program` for the fronts.  Returns None if
    fronts will get it (or mode is off), else the one line that says why
    not and how to fix it.  The exporter's filter is compiled with it."""
    global program, exporter_program
    if mode == "off":
        return None
    try:
        kernel = _kernel_problem()
        if kernel:
            raise Unavailable(kernel, "use a kernel built with CONFIG_SECCOMP_FILTER")
        program = build()
        exporter_program = build(EXPORTER_ALLOWED)
        return None
    except Unavailable as e:
        reason, fix = e.args
    except OSError as e:                       # a rule this libseccomp refuses
        reason, fix = f"libseccomp refused the filter: {e}", INSTALL_LIBSECCOMP
    return f"seccomp filter for fronts unavailable: {reason}; {fix}"


def confine_front(mode, role="front"):
    """Load the filter into this process (a front, already sandboxed; or
    with role="exporter", the metrics exporter, its own filter).
    `mode` is login_seccomp: required (failing to load raises SeccompError,
    and the process exits), optional (a failure is logged and the process
    goes on, as the supervisor announced), off.  Returns what happened."""
    if mode == "off":
        return "off"
    bpf = exporter_program if role == "exporter" else program
    if bpf is None:
        if mode == "required":          # the supervisor refuses to start first
            raise SeccompError("seccomp unavailable: no filter was built at startup")
        return "unavailable"
    try:
        privileges.install_seccomp(bpf)
    except OSError as e:
        if mode == "required":
            raise SeccompError(f"cannot load the seccomp filter: {e}") from None
        log.warning("%s: cannot load the seccomp filter: %s; going on "
                    "without it (login_seccomp: optional)", role, e)
        return "failed"
    return "loaded"
