"""Process titles: the fixed vocabulary `ps` shows an operator.

Runs in: all processes.  Every local user can read process titles, so the
user name and client address appear only with logging.verbose_proctitle.
"""
import importlib.machinery
import importlib.util
import os


def _load_setproctitle():
    """setproctitle's C module, without its package's __init__, which
    imports the logging module (and so threading) only to log that the C
    module is missing; logsetup.py says what those two cost every forked
    process (~630 kB of dirtied pages in each child and front).

    This is setproctitle's private layout, not its API: setup.py pins the
    releases it was checked on, and tests/unit/test_proctitle.py fails
    (naming this function) as soon as an installed release moves the C
    module or its setproctitle() function."""
    package = importlib.util.find_spec("setproctitle")   # not executed
    for directory in package.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_setproctitle" + suffix)
            if os.path.exists(path):
                spec = importlib.util.spec_from_file_location(
                    "setproctitle._setproctitle", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    raise ImportError("setproctitle's C module _setproctitle is missing")


setproctitle = _load_setproctitle()

SUPERVISOR = "supervisor"
SPAWNER = "spawner"
BROKER = "auth-broker"
BROKER_WORKER = "auth-worker"
CHILD_IDLE = "child idle"
CHILD_BUSY = "child busy"
CHILD_SESSION = "child session"
FRONT = "front"
LOCK_HELPER = "lock-helper"
EXPORTER = "metrics-exporter"

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
