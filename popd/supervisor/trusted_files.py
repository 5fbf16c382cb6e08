"""Owner, mode and symlink checks on the paths popd trusts, each problem
reported as one line with the command that fixes it.

Runs in: the supervisor (as root), at startup and when a grant asks for a
per-uid state directory.
"""
import os
import stat


def _describe(path, st):
    return f"{path} (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def root_directory(path, mode, must_be_empty=False, create=True):
    """Make `path` if missing (root-owned, `mode`; with create=False a
    missing one is no problem: it would be made); otherwise check it is a
    real directory owned by root that group and others cannot write.
    Returns a problem line or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755, exist_ok=True)
        os.mkdir(path, mode)
        os.chown(path, 0, 0)
        os.chmod(path, mode)
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory; remove it and let popd create it"
    if st.st_uid != 0:
        return f"{_describe(path, st)} is not owned by root; run: chown root:root {path}"
    if st.st_mode & 0o022:
        return (f"{_describe(path, st)} is writable by group or others; "
                f"run: chmod {mode:04o} {path}")
    if must_be_empty and os.listdir(path):
        return f"{path} must be empty (it is the fronts' chroot); empty it"
    return None


def user_state_directory(state_dir, uid, gid):
    """<state_dir>/<uid>/, mode 0700, owned by the uid; made if missing.
    Returns a problem line or None."""
    path = os.path.join(state_dir, str(uid))
    try:
        os.mkdir(path, 0o700)
        os.chown(path, uid, gid)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        return f"{path}: cannot create: {e.strerror}"
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory; remove it"
    if st.st_uid != uid:
        return f"{_describe(path, st)} is not owned by uid {uid}; run: chown {uid}:{gid} {path}"
    return None


def _chain_problem(path):
    """A directory on the way to a trusted file that someone other than
    root can write (without the sticky bit) lets them swap the file: its
    owner if not root, everyone, or the members of a group other than
    root's."""
    directory = os.path.dirname(os.path.realpath(path))
    while True:
        st = os.stat(directory)
        if st.st_uid != 0 and directory != "/":
            return (f"{_describe(directory, st)} (on the way to {path}) is not "
                    f"owned by root; run: chown root {directory}")
        if not st.st_mode & stat.S_ISVTX:
            if st.st_mode & 0o002:
                return (f"{_describe(directory, st)} (on the way to {path}) is "
                        f"writable by everyone; run: chmod o-w {directory}")
            if st.st_mode & 0o020 and st.st_gid != 0:
                return (f"{_describe(directory, st)} (on the way to {path}) is "
                        f"writable by group {st.st_gid}; run: chmod g-w {directory}")
        if directory == "/":
            return None
        directory = os.path.dirname(directory)


def trusted_file(path, what, readable_by_others, group=None):
    """A file popd reads as root and believes: owned by root, writable by
    nobody else, and (for secrets) not readable by others."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path} ({what}): {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} ({what}) is not a regular file"
    if st.st_uid != 0:
        fix = f"chown root{':' + str(group) if group is not None else ''} {path}"
        return f"{_describe(path, st)} ({what}) is not owned by root; run: {fix}"
    if st.st_mode & 0o022:
        return (f"{_describe(path, st)} ({what}) is writable by group or others; "
                f"run: chmod go-w {path}")
    if not readable_by_others and st.st_mode & 0o004:
        return (f"{_describe(path, st)} ({what}) is readable by others; run: "
                f"chmod o-r {path}")
    return _chain_problem(path)


def spool_directory(template):
    """For a spool template like /var/mail/%u (mailpath.py): the spool must not be
    writable by everyone without the sticky bit (anyone could then replace
    anyone's mailbox).  Debian's 2775 root:mail is fine."""
    if template.startswith(("~", "%h")) or "/" in template[template.index("%"):]:
        return None                        # e.g. ~/mbox, /home/%u/mbox: per-user dirs
    directory = os.path.dirname(template)
    try:
        st = os.stat(directory)
    except OSError:
        return None                        # no spool yet: nothing to check
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        return (f"{_describe(directory, st)} (the spool) is writable by everyone "
                f"without the sticky bit; run: chmod 1777 {directory} (or 2775 "
                f"with group mail)")
    return None


def suid_dumpable_warning():
    """fs.suid_dumpable other than 0 lets processes that changed uid dump
    core or be inspected; popd marks its processes non-dumpable itself, but
    says so."""
    try:
        with open("/proc/sys/fs/suid_dumpable") as f:
            value = f.read().strip()
    except OSError:
        return None
    if value != "0":
        return (f"fs.suid_dumpable is {value}: processes that changed uid may "
                f"dump core; run: sysctl -w fs.suid_dumpable=0 (and set it in "
                f"/etc/sysctl.d/)")
    return None
