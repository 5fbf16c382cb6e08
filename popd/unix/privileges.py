"""The only code in popd that changes credentials.

Runs in: the broker, each child, each front and each lock helper, right
after they are forked (as root, or for the lock helper as the child's
user), and in the child once more at the grant.

Capabilities and prctl are reached through ctypes (about forty lines;
python-prctl needs libcap headers to build).  Every drop ends with a
self-check through capget/getresuid/getgroups rather than /proc, because a
front is chrooted where /proc does not exist; a check that fails raises
PrivilegeError and the caller exits: a process that is not what it should
be must not go on.
"""
import ctypes
import os
import resource
import struct

CAP_SETGID = 6
CAP_SETUID = 7
SETID_CAPS = (1 << CAP_SETGID) | (1 << CAP_SETUID)

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSN = 8                  # sizeof(struct sock_filter)
_CAP_VERSION_3 = 0x20080522

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]
# Looked up here, at import: a CDLL resolves a name on first use (Python
# code that caches it on the instance), and a first use in a slot would
# copy the pages it writes into every session.
_capget, _capset = _libc.capget, _libc.capset
_capget.argtypes = _capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

# capget(2)/capset(2) take a header (version, pid) and, for 64-bit sets,
# two data structs (effective, permitted, inheritable: the low 32 bits,
# then the high 32 bits).  They are packed with struct into one buffer
# made here rather than built as ctypes Structures, whose classes and
# field descriptors a slot's first capset and capget would touch, copying
# their pages (measured in a fork of the spawner's image: 144 kB copied
# with Structures, 64 kB with this buffer).
_CAP_HEADER = struct.Struct("=Ii")        # struct __user_cap_header_struct
_CAP_DATA = struct.Struct("=6I")          # struct __user_cap_data_struct[2]
_cap_buffer = ctypes.create_string_buffer(_CAP_HEADER.size + _CAP_DATA.size)
_CAP_HEADER_AT = ctypes.addressof(_cap_buffer)
_CAP_DATA_AT = _CAP_HEADER_AT + _CAP_HEADER.size
_LOW = 0xFFFFFFFF


class _SockFprog(ctypes.Structure):            # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


with open("/proc/sys/kernel/cap_last_cap") as _f:    # read while /proc exists
    CAP_LAST = int(_f.read())


class PrivilegeError(Exception):
    """A credential change failed or its self-check did not hold."""


def _prctl(option, arg2=0, arg3=0):
    result = _libc.prctl(option, arg2, arg3, 0, 0)
    if result < 0:
        raise PrivilegeError(f"prctl({option}): "
                             f"{os.strerror(ctypes.get_errno())}")
    return result


def capget():
    """(effective, permitted, inheritable) as 64-bit masks."""
    _CAP_HEADER.pack_into(_cap_buffer, 0, _CAP_VERSION_3, 0)
    if _capget(_CAP_HEADER_AT, _CAP_DATA_AT) < 0:
        raise PrivilegeError(f"capget: {os.strerror(ctypes.get_errno())}")
    e_low, p_low, i_low, e_high, p_high, i_high = _CAP_DATA.unpack_from(
        _cap_buffer, _CAP_HEADER.size)
    return e_low | e_high << 32, p_low | p_high << 32, i_low | i_high << 32


def capset(effective, permitted, inheritable=0):
    _CAP_HEADER.pack_into(_cap_buffer, 0, _CAP_VERSION_3, 0)
    _CAP_DATA.pack_into(_cap_buffer, _CAP_HEADER.size,
                        effective & _LOW, permitted & _LOW, inheritable & _LOW,
                        effective >> 32 & _LOW, permitted >> 32 & _LOW,
                        inheritable >> 32 & _LOW)
    if _capset(_CAP_HEADER_AT, _CAP_DATA_AT) < 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")


def bounding_set():
    return sum(1 << c for c in range(CAP_LAST + 1) if _prctl(_PR_CAPBSET_READ, c))


def install_seccomp(program):
    """Put a classic BPF seccomp program (seccomp.py builds it) on this
    process: the kernel copies it; no file is read.  Needs no_new_privs
    (harden() sets it) or root.  OSError if the kernel refuses."""
    fprog = _SockFprog(len(program) // _BPF_INSN, program)
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER,
                   ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def seccomp_probe():
    """errno of PR_SET_SECCOMP with a NULL program (Chromium's probe):
    EFAULT where the kernel takes filters (it tried to read the program),
    EINVAL where it does not; nothing is installed either way."""
    _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, 0, 0, 0)
    return ctypes.get_errno()


def set_child_subreaper():
    """Orphaned fronts are re-parented to the supervisor, which reaps them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig):
    _prctl(_PR_SET_PDEATHSIG, sig)


def harden():
    """Settings every dropped process shares: no core files (they would hold
    passwords or mail), no ambient capabilities, no privilege gain through
    exec, not dumpable (so same-uid processes cannot ptrace it)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_DUMPABLE, 0)


def drop_bounding(keep):
    """Remove every capability but `keep` from the bounding set (root only:
    it needs CAP_SETPCAP)."""
    for cap in range(CAP_LAST + 1):
        if not keep & (1 << cap):
            _prctl(_PR_CAPBSET_DROP, cap)


def drop_to(uid, gid, keep=0, groups=()):
    """From root to uid/gid with no supplementary groups but `groups`,
    keeping only `keep` in the permitted and bounding sets (never
    effective).  Used by the broker (keep=0, groups: the shadow group when
    it reads /etc/shadow), the front (keep=0) and the child
    (keep=SETUID|SETGID)."""
    if os.geteuid() != 0:
        raise PrivilegeError("drop_to must start as root")
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"refusing to drop to uid {uid} gid {gid}")
    drop_bounding(keep)                        # needs CAP_SETPCAP: still root
    os.setgroups(sorted(set(groups)))
    _prctl(_PR_SET_KEEPCAPS, 1 if keep else 0)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(_PR_SET_KEEPCAPS, 0)
    capset(0, keep)
    harden()
    check(uid, gid, permitted=keep, bounding=keep, groups=groups)


def sandbox_front(root, uid, gid):
    """The front: chroot into an empty directory, then no capabilities at
    all.  chroot needs CAP_SYS_CHROOT, so it comes before the drop."""
    os.chroot(root)
    os.chdir("/")
    drop_to(uid, gid, keep=0)


def become_owner(uid, gid, first_valid_uid, first_valid_gid, forbidden_uids,
                 forbidden_gids):
    """The child at the grant: from the pool user to the mailbox owner,
    then no capabilities (switch_to)."""
    if uid == 0 or uid < first_valid_uid or uid in forbidden_uids:
        raise PrivilegeError(f"refusing to switch to uid {uid}")
    if gid == 0 or gid < first_valid_gid or gid in forbidden_gids:
        raise PrivilegeError(f"refusing to switch to gid {gid}")
    switch_to(uid, gid, bounding=SETID_CAPS)


def switch_to(uid, gid, bounding):
    """From a process that may change ids (root, or CAP_SETUID|CAP_SETGID
    permitted, as drop_to(keep=SETID_CAPS) leaves them) to exactly uid and
    gid (real, effective, saved), no supplementary groups, no
    capabilities, hardened; proved by check() and by trying to get the
    old uid and uid 0 back.  The child at the grant and the lock helper."""
    previous = os.getuid()
    if os.geteuid() != 0:
        capset(SETID_CAPS, SETID_CAPS)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # A change between two non-zero uids keeps the capability sets
    # (capabilities(7)), so they are cleared by hand; and a change of ids
    # resets "dumpable", so harden() comes after it.
    capset(0, 0)
    harden()
    check(uid, gid, permitted=0, bounding=bounding)
    for target in sorted({previous, 0}):
        try:
            os.setresuid(target, target, target)
        except PermissionError:
            continue
        raise PrivilegeError(f"uid {target} could be regained")


def limit_resources(max_files, max_memory_mib):
    """Bounds for a process that serves one client: few fds, a memory cap
    (RLIMIT_AS) and no forking at all (RLIMIT_NPROC 0 applies to this
    process only, since it is unprivileged now).  Lowered, never raised."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))
    limit_memory(max_memory_mib)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def limit_memory(max_memory_mib):
    """RLIMIT_AS: past it an allocation fails (MemoryError) instead of
    growing the process; lowered, never raised."""
    size = max_memory_mib << 20
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def check(uid, gid, permitted, bounding, groups=()):
    """Raise unless the process is exactly uid/gid, no groups but `groups`, the given
    permitted/bounding sets, nothing effective, no_new_privs, not dumpable."""
    eff, prm, inh = capget()
    facts = {
        "uids": (os.getresuid(), (uid, uid, uid)),
        "gids": (os.getresgid(), (gid, gid, gid)),
        "groups": (sorted(os.getgroups()), sorted(set(groups))),
        "effective": (eff, 0),
        "permitted": (prm, permitted),
        "inheritable": (inh, 0),
        "bounding": (bounding_set(), bounding),
        "no_new_privs": (_prctl(_PR_GET_NO_NEW_PRIVS), 1),
        "dumpable": (_prctl(_PR_GET_DUMPABLE), 0),
    }
    wrong = [f"{k}={got!r} (want {want!r})" for k, (got, want) in facts.items()
             if got != want]
    if wrong:
        raise PrivilegeError("credential self-check failed: " + ", ".join(wrong))
