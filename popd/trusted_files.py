"""Owner, mode and symlink checks on the paths popd trusts, each problem
reported as one line with the command that fixes it.

Runs in: the supervisor (as root), at startup and when a grant asks for a
per-uid state directory.
"""
import os
import stat


def _describe(path, st):
    return f"{path} (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def root_directory(path, mode, must_be_empty=False):
    """Make `path` if missing (root-owned, `mode`); otherwise check it is a
    real directory owned by root that group and others cannot write.
    Returns a problem line or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
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
