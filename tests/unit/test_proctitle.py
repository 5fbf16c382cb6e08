"""popd/unix/proctitle.py loads setproctitle's C module without the package's
__init__ (which would import logging and threading into every process).
That is a private layout: these tests fail as soon as an installed
setproctitle moves it, instead of popd silently losing its titles."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_titles_are_set_through_the_c_module_without_logging_or_threading():
    done = run("import sys\n"
               "from popd.unix import proctitle\n"
               "proctitle.set_title(proctitle.SUPERVISOR)\n"
               "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[0].decode())\n"
               "print('logging' in sys.modules, 'threading' in sys.modules,"
               " 'setproctitle' in sys.modules)\n")
    assert done.returncode == 0, ("setproctitle's private layout changed: fix "
                                  "proctitle._load_setproctitle() and the pin in "
                                  "setup.py\n" + done.stderr)
    title, modules = done.stdout.splitlines()
    assert title == "popd: supervisor"
    # The package itself (and its logging import) was never executed.
    assert modules == "False False False"


def test_the_installed_release_is_in_the_pinned_range():
    from importlib.metadata import version
    major, minor = (int(x) for x in version("setproctitle").split(".")[:2])
    assert (major, minor) == (1, 3), version("setproctitle")
