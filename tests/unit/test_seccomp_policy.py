"""The fronts' seccomp policy (popd/unix/seccomp.py) as data and as a program.

The live fronts and the attacks are in tests/system/test_seccomp.py; here:
the lists are consistent, the classic BPF program the supervisor keeps
says what the module's docstring says (run below by a small interpreter,
as the kernel runs it), and it holds in a throwaway process.
"""
import ctypes
import errno
import mmap
import os
import signal
import socket
import struct

import pytest

from popd.unix import seccomp

# What the supervisor does at startup: compile the program once and keep it.
PROBLEM = seccomp.startup_problem("required")
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))

# libseccomp only to name system calls (the program itself comes from popd).
_lib = ctypes.CDLL("libseccomp.so.2") if PROBLEM is None else None
if _lib is not None:
    _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_arch_native.restype = ctypes.c_uint32


def nr(name):
    return _lib.seccomp_syscall_resolve_name(name.encode())


def run_bpf(program, number, args=(), arch=None):
    """The action the program returns for a call: a classic BPF
    interpreter for the instructions libseccomp emits, over struct
    seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}."""
    args = list(args) + [0] * (6 - len(args))
    data = struct.pack("=iIQ6Q", number, _lib.seccomp_arch_native() if arch is None else arch,
                       0, *args)
    insns = list(struct.iter_unpack("=HBBI", program))
    pc, a = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:                                  # ld [k]  (W | ABS)
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:                                # and #k
            a &= k
        elif code == 0x06:                                # ret #k
            return k
        elif code == 0x05:                                # ja +k
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):            # jeq, jgt, jge, jset #k
            test = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if test else jf
        else:
            raise AssertionError(f"instruction {code:#x} at {pc} not interpreted")
        pc += 1


def test_allowed_and_denied_do_not_overlap_and_all_exist():
    allowed = set(seccomp.ALLOWED) | set(seccomp.CONDITIONAL)
    assert not allowed & set(seccomp.DENIED)
    for name in allowed | set(seccomp.DENIED):
        assert nr(name) >= 0, name


def test_the_program_matches_the_policy():
    prog = seccomp.program
    assert prog == seccomp.build()                  # the same every time
    allow, eperm = seccomp.ACT_ALLOW, seccomp.ACT_EPERM
    for name in seccomp.ALLOWED:
        if nr(name) >= 0:
            assert run_bpf(prog, nr(name)) == allow, name
    for name in seccomp.DENIED:
        assert run_bpf(prog, nr(name), [1, 2, 3]) == eperm, name
    assert run_bpf(prog, 999) == eperm                               # the default
    cases = {
        ("ioctl", 3, seccomp.FIONBIO): allow,
        ("ioctl", 3, 0x8901): eperm,                                 # FIOSETOWN
        ("ioctl", 3, seccomp.FIONBIO | 1 << 32): eperm,              # all 64 bits
        ("socketpair", socket.AF_UNIX, socket.SOCK_STREAM): allow,
        ("socketpair", socket.AF_INET, socket.SOCK_STREAM): eperm,
        ("setsockopt", 3, socket.IPPROTO_TCP, socket.TCP_NODELAY): allow,
        ("setsockopt", 3, socket.IPPROTO_TCP, 3): eperm,             # TCP_CORK
        ("setsockopt", 3, socket.SOL_SOCKET, socket.TCP_NODELAY): eperm,
        ("prctl", seccomp.PR_SET_NAME): allow,
        ("prctl", 4): eperm,                                         # PR_SET_DUMPABLE
        ("mmap", 0, 4096, mmap.PROT_READ | mmap.PROT_WRITE): allow,
        ("mmap", 0, 4096, mmap.PROT_READ | mmap.PROT_EXEC): eperm,
        ("mprotect", 0, 4096, mmap.PROT_READ): allow,
        ("mprotect", 0, 4096, mmap.PROT_EXEC): eperm,
    }
    for (name, *args), action in cases.items():
        assert run_bpf(prog, nr(name), args) == action, (name, args)


def test_another_abi_kills():
    kill = seccomp.ACT_KILL_PROCESS
    assert run_bpf(seccomp.program, nr("read"), arch=0x40000003) == kill    # i386
    if os.uname().machine == "x86_64":                # x32: x86_64 arch, high bit
        assert run_bpf(seccomp.program, nr("read") | 0x40000000) == kill


def test_off_and_available_report_nothing():
    assert seccomp.startup_problem("off") is None
    assert seccomp.startup_problem("optional") is None
    assert seccomp.confine_front("off") == "off"


def test_a_loaded_filter_refuses_with_eperm():
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert seccomp.confine_front("required") == "loaded"
            try:
                os.kill(os.getppid(), 0)
                code = 2
            except PermissionError:
                try:
                    socket.socket(socket.AF_INET)
                    code = 3
                except OSError as e:
                    code = 0 if e.errno == errno.EPERM else 4
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_refused_call_fails_instead_of_killing():
    """ERRNO, not KILL: the process lives on to log and exit."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            if seccomp.confine_front("required") == "loaded":
                try:
                    os.kill(os.getpid(), signal.SIGKILL)
                except PermissionError:
                    code = 7                # refused, and alive to say so
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
