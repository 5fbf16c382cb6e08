"""Issue 13: the README's first command, scripts/demo.sh, as a newcomer
runs it: beside a popd that already holds /run/popd/popd.pid and port
1110, every client command it prints works exactly as printed (curl,
fetchmail, getmail6, mutt), and Ctrl-C leaves no directory behind (it holds a
private key and a password hash)."""
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")
DEMO = REPO / "scripts" / "demo.sh"


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def quick_start():
    """The README's quick start: exactly two commands, each `sudo` + a
    script of this tree (this test runs as root, without sudo)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    for argv in commands:
        assert argv[0] == "sudo" and (REPO / argv[1]).is_file(), argv
    return [argv[1:] for argv in commands]


def test_the_quick_start_is_the_demo_and_the_suite():
    demo, tests = quick_start()
    assert demo == ["scripts/demo.sh"] and tests == ["scripts/test.sh"]
    # The second command installs what the suite uses before running it.
    assert "sh scripts/test-deps.sh" in (REPO / "scripts" / "test.sh").read_text()
    assert "bash scripts/test-deps.sh" in (REPO / ".ci" / "run").read_text()


def start_demo(*args, log=None):
    """demo.sh with `args`, in its own process group as in a terminal;
    popd's log lines (its stderr) go to `log`."""
    command = [str(REPO / quick_start()[0][0])]
    proc = subprocess.Popen([*command, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL,
                            text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Stop with Ctrl-C"):
            return proc, lines
    proc.kill()
    said = open(log.name).read() if log else ""
    raise AssertionError(f"the demo never said it was ready (exit {proc.wait()}):\n"
                         + "\n".join(lines) + said)


def printed(lines, start):
    """The command of the printed line that starts with `start`, without
    its trailing comment, exactly as a user would paste it."""
    (line,) = [x.strip() for x in lines if x.strip().startswith(start)]
    return re.sub(r"\s+#.*$", "", line)


def run_in_a_terminal(command, wanted, timeout=30):
    """`command` (a shell line) on a pseudo-terminal, as a user runs mutt;
    returns what it drew once `wanted` appeared (or at the timeout)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "vt100"
        os.execvp("sh", ["sh", "-c", command])
    screen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and wanted not in screen:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                screen += chunk
        time.sleep(0.5)                             # the rest of the index line
        while select.select([fd], [], [], 0.2)[0]:
            try:
                screen += os.read(fd, 65536)
            except OSError:
                break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return screen


def ctrl_c(proc):
    os.killpg(proc.pid, signal.SIGINT)      # what the terminal does: the whole group
    return proc.wait(60)


@pytest.fixture
def installed_popd():
    """A popd as "Installing for real" leaves one: the default pid file
    and port 1110 (when this machine has them free)."""
    listen = [{"address": "127.0.0.1", "port": 1110, "tls": "none"}] if port_free(1110) else None
    extra = {"pidfile": "/run/popd/popd.pid"}
    if listen:
        extra["listen"] = listen
    d = Daemon(extra=extra)
    d.holds_1110 = bool(listen)
    os.makedirs("/run/popd", mode=0o755, exist_ok=True)
    with d:
        yield d


def test_demo_beside_a_running_popd_prints_commands_that_work(installed_popd, tmp_path):
    log = open(tmp_path / "demo.log", "w")
    proc, lines = start_demo(log=log)
    try:
        text = "\n".join(lines)
        base = re.search(r"files in (/tmp/popd-demo-\S+) \(removed", text).group(1)
        port = int(re.search(r"STLS on 127\.0\.0\.1:(\d+)", text).group(1))
        if installed_popd.holds_1110:
            assert port != 1110, "the demo reported the installed popd's port"
        curl = subprocess.run(printed(lines, f"curl --cacert {base}/cert.pem --ssl-reqd"),
                              shell=True, capture_output=True, text=True, timeout=60)
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout.splitlines() == ["1 238", "2 151"]
        retr = subprocess.run(printed(lines, f"curl --cacert {base}/cert.pem -u demo"),
                              shell=True, capture_output=True, text=True, timeout=60)
        assert retr.returncode == 0 and "Subject: Welcome to popd" in retr.stdout, retr.stderr
        for tool, start in (("fetchmail", "fetchmail -f"), ("getmail", "getmail --getmaildir")):
            if not shutil.which(tool):
                continue
            done = subprocess.run(printed(lines, start), shell=True,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            got = open(f"{base}/fetched/{tool}.mbox").read()
            assert got.count("Subject: ") == 2 and "Welcome to popd" in got
        if shutil.which("mutt"):
            screen = run_in_a_terminal(printed(lines, "mutt -n -F"), b"Welcome to popd")
            assert b"Welcome to popd" in screen and b"Second message" in screen, screen[-500:]
        assert installed_popd.proc.poll() is None      # the other popd is untouched
    finally:
        code = ctrl_c(proc)
    assert code == 0
    assert not os.path.exists(base), "the demo left its directory (key, hash) behind"
    assert installed_popd.proc.poll() is None
    said = (tmp_path / "demo.log").read_text()
    assert "Traceback" not in said and "died of signal" not in said, said


def test_demo_cleans_up_when_popd_cannot_start():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run([str(DEMO), "--port", str(port)], capture_output=True,
                             text=True, timeout=180)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"demo: 127.0.0.1:{port} is in use; pick another port")


def test_demo_keeps_a_given_directory(tmp_path):
    # pytest's tmp_path is under a 0700 directory: the demo says so.
    refused = subprocess.run([str(DEMO), "--dir", str(tmp_path / "demo")],
                             capture_output=True, text=True, timeout=180)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "choose a directory under /tmp or /srv")
    root = Path(tempfile.mkdtemp(prefix="popd-demo-test-", dir="/tmp"))
    os.chmod(root, 0o755)
    keep = root / "demo"
    try:
        proc, lines = start_demo("--dir", str(keep), log=open(tmp_path / "demo.log", "w"))
        try:
            assert f"files kept in {keep}" in "\n".join(lines)
        finally:
            assert ctrl_c(proc) == 0
        assert (keep / "popd.yaml").exists() and (keep / "cert.pem").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
