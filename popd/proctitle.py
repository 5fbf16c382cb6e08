"""Process titles: the fixed vocabulary `ps` shows an operator.

Runs in: all processes.  Every local user can read process titles, so the
user name and client address appear only with logging.verbose_proctitle.
"""
import setproctitle

SUPERVISOR = "supervisor"
SPAWNER = "spawner"
BROKER = "auth-broker"
BROKER_WORKER = "auth-worker"
CHILD_IDLE = "child idle"
CHILD_BUSY = "child busy"
CHILD_SESSION = "child session"
FRONT = "front"

_verbose = False


def configure(verbose):
    global _verbose
    _verbose = bool(verbose)


def set_title(role, user=None, peer=None):
    title = f"popd: {role}"
    if _verbose:
        extra = " ".join(x for x in (user, f"[{peer}]" if peer else None) if x)
        if extra:
            title += " " + extra
    setproctitle.setproctitle(title)
