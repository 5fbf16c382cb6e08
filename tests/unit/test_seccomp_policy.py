"""The fronts' seccomp policy (popd/seccomp.py) as data and as a filter.

The live fronts and the attacks are in tests/system/test_seccomp.py; here:
the lists are consistent, the compiled filter says what the module's
docstring says, and it holds in a throwaway process.
"""
import errno
import os
import signal
import socket

import pytest

from popd import seccomp

pytestmark = pytest.mark.skipif(seccomp.pyseccomp is None, reason="pyseccomp is not installed")


def pfc():
    """libseccomp's pseudo-code listing of the filter."""
    r, w = os.pipe()
    with os.fdopen(w, "w") as f:
        seccomp.build().export_pfc(f)
    with os.fdopen(r) as f:
        return f.read()


def test_allowed_and_denied_do_not_overlap_and_all_exist():
    allowed = set(seccomp.ALLOWED) | set(seccomp.CONDITIONAL)
    assert not allowed & set(seccomp.DENIED)
    native = seccomp.pyseccomp.Arch.NATIVE
    for name in allowed | set(seccomp.DENIED):
        assert seccomp.pyseccomp.resolve_syscall(native, name) >= 0, name


def test_the_compiled_filter_matches_the_policy():
    text = pfc()
    assert "action ERRNO(1);" in text.split("# default action")[1]      # EPERM
    for name in ("kill", "ptrace", "execve", "socket", "openat", "fcntl"):
        assert f'"{name}"' not in text, name
    ioctl = text.split('"ioctl"')[1].split("# filter for syscall")[0]
    assert f"== {seccomp.FIONBIO}" in ioctl
    mmap_rule = text.split('"mmap"')[1].split("# filter for syscall")[0]
    assert "$a2.lo32 & 0x00000004 == 0" in mmap_rule                # no PROT_EXEC


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
        try:
            seccomp.confine_front("required")
            try:
                os.kill(os.getpid(), signal.SIGKILL)
            except PermissionError:
                pass
        finally:
            os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
