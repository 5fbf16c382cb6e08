"""Threat "insecure files at install" (DESIGN.md, Threats): answered by
permission checks at startup and an install step that sets the modes.
The install step (scripts/popd-setup) checked against the real thing: the
documented tree, owners and modes, repaired when wrong, symbolic links
refused, a dry run announcing exactly what the real run does; the
installed configuration passes --check-config, and the tree is served by
the real daemon running under the systemd unit's capability bounding set.
(The unit, the SysV script and fail2ban: test_service_scripts.py.)"""
import hashlib
import os
import poplib
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from popd import config
from popd.broker import passwd
from tests.clients import PLAIN_MBOX
from tests.daemon import HASH_ROUNDS, REPO, USERS, Daemon, status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

SETUP = REPO / "scripts" / "popd-setup"
UNIT = REPO / "scripts" / "popd.service"
EXAMPLE = REPO / "etc" / "popd.yaml"

# System ids for the scratch tree's users, away from the host's own and
# from tests.daemon's numeric ids (600xx, 610xx).
SCRATCH_LOGIN_DEFS = ("SYS_UID_MIN 64000\nSYS_UID_MAX 64099\n"
                      "SYS_GID_MIN 64000\nSYS_GID_MAX 64099\n")
SERVICE_USERS = ("popd", "popd-login", "popd-auth")


# -- the scratch tree ------------------------------------------------------------

@pytest.fixture
def scratch():
    """An empty root tree with the account files useradd --prefix needs.
    Under /tmp, mode 0755: the daemon's dropped users must traverse it."""
    root = Path(tempfile.mkdtemp(prefix="popd-ops-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    (root / "etc" / "login.defs").write_text(SCRATCH_LOGIN_DEFS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_setup(root, *args):
    return subprocess.run([str(SETUP), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def listing(root):
    """Every path under root with its type, owner, mode and content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = ""
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_uid,
                                                st.st_gid, stat.S_IMODE(st.st_mode), what)
    return out


def accounts(root, name):
    """{login: fields} of root/etc/<name>."""
    lines = (root / "etc" / name).read_text().splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines if line}


def owner_mode(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# -- popd-setup ---------------------------------------------------------------------

def test_setup_makes_the_documented_tree_and_a_second_run_changes_nothing(scratch):
    first = run_setup(scratch)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""

    users, groups, shadow = (accounts(scratch, n) for n in ("passwd", "group", "shadow"))
    for name in SERVICE_USERS:
        _, _, uid, gid, _, home, shell = users[name]
        assert int(uid) != 0 and gid == groups[name][2]
        assert (home, shell) == ("/nonexistent", "/usr/sbin/nologin")
        assert shadow[name][1].startswith("!"), "the account must be locked"
    assert len({users[n][2] for n in SERVICE_USERS}) == 3
    auth_gid = int(groups["popd-auth"][2])

    assert owner_mode(scratch / "etc/popd") == (0, auth_gid, 0o750)
    assert owner_mode(scratch / "etc/popd/passwd") == (0, auth_gid, 0o640)
    assert (scratch / "etc/popd/passwd").read_bytes() == b""
    assert owner_mode(scratch / "etc/popd/tls") == (0, 0, 0o700)
    assert owner_mode(scratch / "var/lib/popd") == (0, 0, 0o711)
    assert owner_mode(scratch / "run/popd/empty") == (0, 0, 0o755)
    assert list((scratch / "run/popd/empty").iterdir()) == []
    assert owner_mode(scratch / "etc/popd.yaml") == (0, 0, 0o644)
    assert (scratch / "etc/popd.yaml").read_bytes() == EXAMPLE.read_bytes()

    before = listing(scratch)
    second = run_setup(scratch)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"popd-setup: nothing to change under {scratch}: everything was already in place"]
    assert listing(scratch) == before


def test_dry_run_changes_nothing_and_announces_exactly_the_real_run(scratch):
    before = listing(scratch)
    dry = run_setup(scratch, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert listing(scratch) == before
    real = run_setup(scratch)
    assert real.returncode == 0, real.stderr
    would = [line.replace("popd-setup: would ", "popd-setup: ")
             for line in dry.stdout.splitlines()[:-1]]
    assert would == real.stdout.splitlines()[:-1]
    assert len(would) > 10


@pytest.mark.parametrize("backend", ["system", "pam"])
def test_setup_for_host_accounts_checks_shadow_and_installs_the_pam_service(scratch, backend):
    """--backend system|pam: /etc/shadow must have a group that reads it
    (popd hands that group to its broker); pam installs /etc/pam.d/popd;
    a new popd.yaml gets the backend; --dry-run announces all of it."""
    shadow = scratch / "etc/shadow"
    os.chmod(shadow, 0o640)                    # root:root: refused, nothing done
    refused = run_setup(scratch, "--backend", backend)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"popd-setup: {shadow} (0:0 640) has group root: the {backend} backend needs a "
        f"group that reads it; run: groupadd -r shadow && chgrp shadow {shadow} && "
        f"chmod 0640 {shadow}"]
    os.chown(shadow, 0, 42)
    before = listing(scratch)
    dry = run_setup(scratch, "--backend", backend, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert listing(scratch) == before
    real = run_setup(scratch, "--backend", backend)
    assert real.returncode == 0, real.stderr
    assert [line.replace("popd-setup: would ", "popd-setup: ")
            for line in dry.stdout.splitlines()[:-1]] == real.stdout.splitlines()[:-1]
    assert f"install {scratch}/etc/popd.yaml from" in real.stdout
    data = yaml.safe_load((scratch / "etc/popd.yaml").read_text())
    assert data["auth"]["backend"] == [backend]
    pam_file = scratch / "etc/pam.d/popd"
    if backend == "pam":
        assert pam_file.read_bytes() == (REPO / "etc/pam.d/popd").read_bytes()
        assert owner_mode(pam_file) == (0, 0, 0o644)
    else:
        assert not pam_file.exists()
    again = run_setup(scratch, "--backend", backend)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout


def test_setup_repairs_owners_and_modes_and_refuses_symlinks(scratch):
    assert run_setup(scratch).returncode == 0
    os.chmod(scratch / "etc/popd", 0o755)
    os.chmod(scratch / "etc/popd.yaml", 0o666)
    os.chown(scratch / "etc/popd/passwd", 5, 5)
    os.chmod(scratch / "var/lib/popd", 0o777)
    (scratch / "etc/popd.yaml").write_text("# the operator's own\n")

    fixed = run_setup(scratch)
    assert fixed.returncode == 0, fixed.stderr
    assert len(fixed.stdout.splitlines()) == 5      # 4 fixes and the summary
    auth_gid = int(accounts(scratch, "group")["popd-auth"][2])
    assert owner_mode(scratch / "etc/popd") == (0, auth_gid, 0o750)
    assert owner_mode(scratch / "etc/popd/passwd") == (0, auth_gid, 0o640)
    assert owner_mode(scratch / "var/lib/popd") == (0, 0, 0o711)
    assert owner_mode(scratch / "etc/popd.yaml") == (0, 0, 0o644)
    # An existing config keeps its content.
    assert (scratch / "etc/popd.yaml").read_text() == "# the operator's own\n"

    (scratch / "etc/popd/passwd").unlink()
    (scratch / "etc/popd/passwd").symlink_to("/etc/shadow")
    refused = run_setup(scratch)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"popd-setup: {scratch}/etc/popd/passwd is a symbolic link; popd trusts "
        f"only real files: remove it and run popd-setup again"]


def test_install_venv_is_readable_by_unprivileged_users(scratch):
    """--install-venv: a venv from /usr/bin/python3 with popd installed
    from this tree, linked as usr/sbin/popd; loadable as nobody (popd-setup
    checks that itself); a second run changes nothing."""
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"]).returncode:
        pytest.skip("/usr/bin/python3 has no venv module (Debian package python3-venv)")
    venv = scratch / "opt/popd"
    first = subprocess.run([str(SETUP), "--root", str(scratch), "--install-venv",
                            "--venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert os.readlink(scratch / "usr/sbin/popd") == str(venv / "bin/popd")
    assert os.path.exists(scratch / "usr/local/share/man/man5/popd.yaml.5")
    version = subprocess.run([str(scratch / "usr/sbin/popd"), "--version"], cwd="/",
                             capture_output=True, text=True)
    assert version.stdout.startswith("popd "), version.stderr
    second = subprocess.run([str(SETUP), "--root", str(scratch), "--install-venv",
                             "--venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "nothing to change" in second.stdout, second.stdout


def as_scratch_users(root, command):
    """`command` with the scratch tree's /etc/passwd and /etc/group bound
    over the host's in a private mount namespace, so popd resolves the
    names popd-setup created there."""
    script = (f'mount --bind "{root}/etc/passwd" /etc/passwd && '
              f'mount --bind "{root}/etc/group" /etc/group && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", *command]


def mount_namespaces_work():
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def test_installed_config_passes_check_config(scratch, tmp_path):
    assert run_setup(scratch).returncode == 0
    installed = scratch / "etc/popd.yaml"

    # Everywhere: the file is valid once its user and group names are
    # replaced by the ids popd-setup gave them in the scratch tree.
    users, groups = accounts(scratch, "passwd"), accounts(scratch, "group")
    data = yaml.safe_load(installed.read_text())
    for key in ("user", "login_user", "broker_user"):
        data[key] = int(users[data[key]][2])
    for key in ("group", "login_group", "broker_group"):
        data[key] = int(groups[data[key]][2])
    numeric = tmp_path / "numeric.yaml"
    numeric.write_text(yaml.safe_dump(data))
    config.load(str(numeric))

    # And the real command, which also checks the files: on the file as
    # installed with its paths moved into the scratch tree (popd-setup made
    # them there) and a certificate of the operator's, names resolved from
    # the scratch tree.
    if not mount_namespaces_work():
        pytest.skip("no mount namespaces here: checked with numeric ids only")
    tls_dir = scratch / "etc/popd/tls"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(tls_dir / "key.pem"), "-out", str(tls_dir / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    os.chmod(tls_dir / "key.pem", 0o600)
    text = installed.read_text()
    for path in ("/etc/popd/", "/var/lib/popd", "/run/popd/"):
        assert path in text
        text = text.replace(path, f"{scratch}{path}")
    located = scratch / "etc/popd-located.yaml"
    located.write_text(text)
    check = subprocess.run(
        as_scratch_users(scratch, [sys.executable, "-m", "popd", "-c", str(located),
                                   "--check-config"]),
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout == f"popd: {located}: configuration is valid\n"


# -- the tree under the systemd unit's capabilities ---------------------------------

def unit_settings():
    """[Service] settings of the unit: {key: value} (last one wins)."""
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def unit_capabilities():
    return unit_settings()["CapabilityBoundingSet"].split()


CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_FOWNER": 3, "CAP_KILL": 5, "CAP_SETGID": 6,
               "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
               "CAP_SYS_CHROOT": 18}


# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3): the kernel's
# form of MemoryDenyWriteExecute=, kept across execve.
MDWE_EXEC = ("import ctypes, os, sys\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "if libc.prctl(65, 1, 0, 0, 0) != 0: sys.exit('PR_SET_MDWE failed')\n"
             "os.execv(sys.argv[1], sys.argv[1:])\n")


def kernel_has_mdwe():
    probe = subprocess.run([sys.executable, "-c", MDWE_EXEC, "/bin/true"])
    return probe.returncode == 0


class UnitSandboxedDaemon(Daemon):
    """popd as the unit starts it, as far as it can be reproduced without
    systemd: the unit's capability bounding set, no_new_privs, umask, core
    limit and (where the kernel has PR_SET_MDWE) MemoryDenyWriteExecute, and
    the scratch tree's users.  Not reproduced: the file system and syscall
    sandboxing (ProtectSystem=, SystemCallFilter=, ...)."""

    def __init__(self, root, **kw):
        super().__init__(**kw)
        self.root = root

    def start(self, wait=True):
        settings = unit_settings()
        bounding = "-all," + ",".join("+" + cap.lower().removeprefix("cap_")
                                       for cap in unit_capabilities())
        assert settings["NoNewPrivileges"] == "yes"
        command = ["setpriv", f"--bounding-set={bounding}", "--no-new-privs", "--"]
        if settings.get("MemoryDenyWriteExecute") == "yes" and kernel_has_mdwe():
            command += [sys.executable, "-c", MDWE_EXEC]
        command += [sys.executable, "-m", "popd", "-c", str(self.config), "-f"]
        self.log_fh = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            as_scratch_users(self.root, command),
            stdin=subprocess.DEVNULL, stdout=self.log_fh, stderr=self.log_fh,
            cwd=REPO, start_new_session=True, umask=int(settings["UMask"], 8),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
        if wait:
            self.wait_for_log("ready:", timeout=30)
        return self


def test_setup_tree_serves_under_the_units_capabilities(scratch):
    """The tree popd-setup made passes popd's start-up checks, and the
    capabilities the unit leaves are enough for a whole session: bind,
    fork the broker and the pool, chroot the fronts, make the per-uid state
    directory, become the owner, update the mailbox."""
    if not mount_namespaces_work() or not shutil.which("setpriv"):
        pytest.skip("needs mount namespaces and setpriv")
    assert run_setup(scratch).returncode == 0
    login, (password, uid, gid) = "alice", USERS["alice"]
    stored = passwd.make_hash(password, "SHA512-CRYPT", rounds=HASH_ROUNDS)
    # Writing keeps the owner and mode popd-setup gave the file.
    (scratch / "etc/popd/passwd").write_text(passwd.format_entry(login, stored, uid, gid) + "\n")

    d = UnitSandboxedDaemon(scratch)
    cfg = yaml.safe_load((scratch / "etc/popd.yaml").read_text())
    cfg["listen"] = [{"address": "127.0.0.1", "port": d.port, "tls": "none"}]
    cfg["login_chroot"] = str(scratch / "run/popd/empty")
    cfg["pidfile"] = str(scratch / "run/popd/popd.pid")
    cfg["auth"].update(passwd_file=str(scratch / "etc/popd/passwd"), plaintext="always")
    cfg["mail"].update(mbox=str(d.spool / "%u"), state_dir=str(scratch / "var/lib/popd"),
                       first_valid_uid=61000, first_valid_gid=61000)
    cfg["limits"].update(max_children=4, spare_children=1, max_per_ip=4, shutdown_grace=1)
    d.config.write_text(yaml.safe_dump(cfg))
    d.write_mbox(login, PLAIN_MBOX)
    with d:
        supervisor = status(d.proc.pid)
        want = sum(1 << CAP_NUMBERS[c] for c in unit_capabilities())
        assert int(supervisor["CapBnd"], 16) == want
        assert int(supervisor["CapEff"], 16) == want
        assert supervisor["NoNewPrivs"] == "1"

        client = poplib.POP3("127.0.0.1", d.port, timeout=10)
        client.user(login)
        assert client.pass_(password).startswith(b"+OK")
        assert client.stat()[0] == 2
        assert client.retr(1)[1][-1] == b"Hello"
        client.dele(1)
        client.quit()
        assert owner_mode(scratch / "var/lib/popd" / str(uid)) == (uid, gid, 0o700)
        d.wait_for_log("session end:")

        client = poplib.POP3("127.0.0.1", d.port, timeout=10)
        client.user(login)
        client.pass_(password)
        assert client.stat()[0] == 1                # the DELE was applied
        # Stopping with a session open: the supervisor signals processes
        # of other uids (the session's, the idle slots').
        assert d.stop() == 0, d.log()
        assert client.sock.recv(1) == b""
        client.close()
