"""What the supervisor's image holds: every pool slot is forked from it (via
the spawner), so each module here is paid at every fork and exit, and
modules with fork handlers run Python code in every new process.  See
logsetup.py (logging, threading), broker_link.py (passlib) and seccomp.py
(no Python binding)."""
import subprocess
import sys

from tests.daemon import REPO

KEPT_OUT = ("logging", "threading", "passlib", "argon2", "pyseccomp", "random")


def test_supervisor_image_leaves_out_costly_modules():
    code = ("import sys, popd.cli, popd.supervisor.loop; "
            f"print(' '.join(m for m in {KEPT_OUT!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == "", f"imported by the supervisor: {out}"

