"""Man pages lint clean (mandoc -Tlint -Wwarning) and are installed by setup.py."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(str(p) for p in (REPO / "man").iterdir())


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc not installed")
def test_man_pages_lint_clean():
    run = subprocess.run(["mandoc", "-Tlint", "-Wwarning", *PAGES], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_setup_installs_every_man_page():
    setup = (REPO / "setup.py").read_text()
    for page in PAGES:
        assert f"man/{Path(page).name}" in setup
