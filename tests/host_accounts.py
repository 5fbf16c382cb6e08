"""A copy of this host's /etc with accounts made by the real tools
(groupadd, useradd, chpasswd), to bind-mount over /etc in a private mount
namespace: popd then meets them through the real name service and the
real /etc/shadow path.  Used by tests/system/test_accounts.py and the
benchmark (bench/foundation.py --backend system)."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def namespaces_work():
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def in_etc(etc, script):
    """Run the shell `script` with `etc` bind-mounted over /etc."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f'mount --bind "{etc}" /etc && {script}'],
                          capture_output=True, text=True, timeout=300)


def namespace_wrap(etc):
    """A Daemon(wrap=...) prefix: popd starts with `etc` over /etc."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc && exec "$@"', str(etc)]


def make_etc(root, users, after=()):
    """root/etc: a copy of /etc (owners kept) with the PAM service of this
    tree and `users` ({login: (password, uid, crypt method)}, group = uid,
    home under root/home) made by groupadd, useradd and chpasswd; then the
    shell commands in `after` (chage, usermod...).  Returns the path."""
    etc = Path(root) / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    subprocess.run(["install", "-m", "0644", "-o", "0", "-g", "0",
                    str(REPO / "etc" / "pam.d" / "popd"), str(etc / "pam.d" / "popd")],
                   check=True)
    script = []
    by_method = {}
    for login, (password, uid, method) in users.items():
        script.append(f"groupadd -g {uid} {login} && useradd -u {uid} -g {uid} "
                      f"-d {root}/home/{login} -m -s /bin/sh {login}")
        by_method.setdefault(method, []).append(f"{login}:{password}")
    for method, lines in by_method.items():
        script.append(f"printf '%s\\n' {' '.join(repr(x) for x in lines)} | chpasswd -c {method}")
    made = in_etc(etc, " && ".join(script + list(after)))
    if made.returncode:
        raise RuntimeError(f"making the test accounts failed: {made.stderr}")
    os.chmod(root, 0o755)
    return etc
