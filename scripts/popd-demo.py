"""Set up and run a throwaway popd demo: STLS on 127.0.0.1:1110 and
implicit TLS on 127.0.0.1:1995.

Everything lives in a fresh temporary directory: config, passwd file
(account demo / password demo), a sample mbox, a self-signed certificate
made with `openssl req -x509`, the state directory and the fronts' chroot.
Numeric uids stand in for the popd system users, so nothing is added to
/etc/passwd.  Passwords are accepted only over TLS (auth.plaintext:
tls-only, the default).  Ctrl-C stops the server.
"""
import os
import subprocess
import sys
import tempfile

import yaml

from popd import passwd

PORT = int(os.environ.get("POPD_DEMO_PORT", "1110"))              # STLS
TLS_PORT = int(os.environ.get("POPD_DEMO_TLS_PORT", "1995"))      # implicit TLS
POPD, LOGIN, AUTH, DEMO = 60090, 60091, 60092, 60100

SAMPLE = b"""From alice@example.org Thu Nov 26 09:00:00 2026
From: Alice <alice@example.org>
To: demo@localhost
Subject: Welcome to popd
Date: Thu, 26 Nov 2026 09:00:00 +0000

This mailbox is served by popd, a privilege-separated POP3 server.
.A line starting with a dot is sent dot-stuffed.

From bob@example.org Thu Nov 26 10:00:00 2026
From: Bob <bob@example.org>
To: demo@localhost
Subject: Second message
Date: Thu, 26 Nov 2026 10:00:00 +0000

>From here on, a quoted From line.

"""


def make_certificate(base):
    """A throwaway self-signed certificate for localhost and 127.0.0.1."""
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
             "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", key, "-out", cert],
            check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"popd-demo: cannot make a certificate with openssl: {e}")
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def main():
    base = tempfile.mkdtemp(prefix="popd-demo-")
    os.chmod(base, 0o755)
    spool = os.path.join(base, "spool")
    os.mkdir(spool, 0o755)
    mbox = os.path.join(spool, "demo")
    with open(mbox, "wb") as f:
        f.write(SAMPLE)
    os.chown(mbox, DEMO, DEMO)
    os.chmod(mbox, 0o600)
    passwd_file = os.path.join(base, "passwd")
    with open(passwd_file, "w") as f:
        stored = passwd.make_hash("demo", "SHA512-CRYPT")
        f.write(passwd.format_entry("demo", stored, DEMO, DEMO) + "\n")
    os.chown(passwd_file, 0, AUTH)
    os.chmod(passwd_file, 0o640)
    cert, key = make_certificate(base)
    cfg = {
        "listen": [{"address": "127.0.0.1", "port": PORT, "tls": "starttls"},
                   {"address": "127.0.0.1", "port": TLS_PORT, "tls": "implicit"}],
        "tls": {"cert": cert, "key": key},
        "auth": {"passwd_file": passwd_file, "plaintext": "tls-only"},
        "user": POPD, "group": POPD, "login_user": LOGIN, "login_group": LOGIN,
        "broker_user": AUTH, "broker_group": AUTH,
        "login_chroot": os.path.join(base, "empty"),
        "mail": {"mbox": os.path.join(spool, "%u"), "state_dir": os.path.join(base, "state"),
                 "first_valid_uid": DEMO, "first_valid_gid": DEMO},
        "limits": {"max_children": 16, "spare_children": 2},
        "logging": {"target": "stderr", "level": "info"},
    }
    config = os.path.join(base, "popd.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    print(f"""
popd demo: {base}
  account demo, password demo, 2 messages in {mbox}

  STLS on 127.0.0.1:{PORT}, implicit TLS on 127.0.0.1:{TLS_PORT}
  self-signed certificate {cert}

Connect with:
  curl --cacert {cert} --ssl-reqd -u demo:demo pop3://127.0.0.1:{PORT}/     # STLS, LIST
  curl --cacert {cert} -u demo:demo pop3s://127.0.0.1:{TLS_PORT}/1          # implicit TLS, RETR 1
  openssl s_client -quiet -starttls pop3 -connect 127.0.0.1:{PORT} -CAfile {cert}
  python3 -c "import poplib, ssl; p = poplib.POP3('127.0.0.1', {PORT}); p.stls(context=ssl.create_default_context(cafile='{cert}')); p.user('demo'); p.pass_('demo'); print(p.stat()); print(b'\\n'.join(p.retr(1)[1]).decode()); p.quit()"
  python3 -c "import poplib, ssl; p = poplib.POP3_SSL('127.0.0.1', {TLS_PORT}, context=ssl.create_default_context(cafile='{cert}')); p.user('demo'); p.pass_('demo'); print(p.list()); p.quit()"

Stop with Ctrl-C.
""", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "popd", "-c", config, "-f"])


if __name__ == "__main__":
    main()
