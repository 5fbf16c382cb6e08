"""The pam backend's check, in a hashing worker: pam_authenticate, then
pam_acct_mgmt, through pamela's public API.

Runs in: the auth broker's hashing workers (uid broker_user, with the
shadow group when configured), never as root.  Why pamela: it is the
binding JupyterHub maintains and ships (pure Python over libpam by
ctypes, nothing to compile), and its authenticate() and check_account()
are the two PAM steps popd needs; python-pam has no account step.

Limits, said in popd(8): the PAM stack runs unprivileged and without
new privileges (no_new_privs), so modules that need root, or a setuid
helper such as unix_chkpwd, do not work; pam_unix works when the worker
can read /etc/shadow (auth.shadow_group).  Credentials are not
established (no pam_setcred, no session): POP3 needs neither.
"""
import pamela

WRONG, RIGHT, REFUSED = 0, 1, 2


def check(service, login, secret):
    """WRONG, RIGHT, or REFUSED (right password, account not allowed)."""
    # libpam reads C strings: a NUL would cut the secret short, so
    # "right\0anything" must never reach it.  Not UTF-8: cannot match
    # what a client could type either.
    if b"\0" in secret:
        return WRONG
    try:
        secret.decode("utf-8")
    except UnicodeDecodeError:
        return WRONG
    try:
        # A tuple: pamela wraps only a str, and would iterate bytes
        # (one "password" per byte, and a crash).
        pamela.authenticate(login, (secret,), service=service, resetcred=0, check=False)
    except pamela.PAMError:
        return WRONG
    try:
        pamela.check_account(login, service=service)
    except pamela.PAMError:
        return REFUSED
    return RIGHT
