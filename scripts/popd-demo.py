"""Set up and run a throwaway popd demo: STLS and implicit TLS on 127.0.0.1.

Everything lives in one directory: config, pid file, passwd file (account
demo / password demo), a sample mbox, a self-signed certificate made with
`openssl req -x509`, the state directory, the fronts' chroot, and ready
configurations for fetchmail, getmail6 and mutt.  Numeric uids stand in for the
popd system users, so nothing is added to /etc/passwd.  Passwords are
accepted only over TLS (auth.plaintext: tls-only, the default).

The demo has its own pid file and its own ports (1110 and 1995, or free
ones if those are taken, e.g. by another popd), so it runs beside an
installed popd.  Ctrl-C (or SIGTERM) stops it, and its directory, which
holds a private key and a password hash, is removed on every way out;
with --dir DIR it is kept.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from popd.broker import passwd

POPD, LOGIN, AUTH, DEMO = 60090, 60091, 60092, 60100
NOBODY = 65534
READY_TIMEOUT = 60

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


def parse_args(argv):
    p = argparse.ArgumentParser(prog="demo.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=None,
                   help="STLS port (default 1110, or a free one if it is taken)")
    p.add_argument("--tls-port", type=int, default=None,
                   help="implicit TLS port (default 1995, or a free one if it is taken)")
    p.add_argument("--dir", metavar="DIR",
                   help="keep the demo's files in DIR (made if missing, must be empty) "
                        "instead of a temporary directory removed at exit")
    return p.parse_args(argv)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(asked, default, taken=()):
    """`asked` if given (it must be free), else `default` if free, else any
    free port."""
    if asked is not None:
        if not port_free(asked):
            sys.exit(f"demo: 127.0.0.1:{asked} is in use; pick another port")
        return asked
    if default not in taken and port_free(default):
        return default
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable(path):
    """The first existing directory above `path` that others cannot
    search (e.g. /root, mode 0700), or None."""
    parent = os.path.dirname(path)
    while True:
        if os.path.isdir(parent) and not os.stat(parent).st_mode & 0o001:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


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
        raise SystemExit(f"demo: cannot make a certificate with openssl: {e}")
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def write(path, data, mode=0o600):
    with open(path, "w") as f:
        f.write(data)
    os.chmod(path, mode)


def client_files(base, port, tls_port, cert):
    """fetchmail, getmail6 and mutt configurations that work against the demo.
    fetchmail checks the certificate's common name, never its IP address:
    hence `sslcommonname localhost` when it connects to 127.0.0.1."""
    fetched = os.path.join(base, "fetched")
    os.mkdir(fetched, 0o755)
    write(os.path.join(base, "fetchmailrc"),
          "set no bouncemail\n"
          f"poll 127.0.0.1 service {port} protocol pop3\n"
          '  user "demo" there password "demo" is root here\n'
          f'  sslproto "TLS1.2+" sslcertck sslcertfile "{cert}" sslcommonname localhost\n'
          "  keep fetchall no rewrite\n"
          f"  mda \"/bin/sh -c 'cat >> {fetched}/fetchmail.mbox'\"\n")
    getmail_dir = os.path.join(base, "getmail")
    os.mkdir(getmail_dir, 0o700)
    # getmail will not deliver as root: it writes as nobody, to a file
    # nobody owns.
    write(os.path.join(fetched, "getmail.mbox"), "")
    os.chown(os.path.join(fetched, "getmail.mbox"), NOBODY, NOBODY)
    write(os.path.join(getmail_dir, "getmailrc"),
          "[retriever]\ntype = SimplePOP3SSLRetriever\n"
          f"server = localhost\nport = {tls_port}\nusername = demo\npassword = demo\n"
          f"ca_certs = {cert}\n"
          "[destination]\ntype = Mboxrd\n"
          f"path = {fetched}/getmail.mbox\nuser = nobody\n"
          "[options]\ndelete = false\nread_all = true\nmessage_log_verbose = false\n")
    # mutt (GnuTLS) checks the name too: localhost.  folder: a directory
    # that exists, or it offers to create ~/Mail first.
    write(os.path.join(base, "muttrc"),
          f'set folder="{base}" spoolfile="pops://localhost:{tls_port}/"\n'
          'set pop_user="demo" pop_pass="demo" ssl_force_tls=yes\n'
          f'set ssl_ca_certificates_file="{cert}" certificate_file="{base}/mutt-certificates"\n')


def prepare(base, port, tls_port):
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
    client_files(base, port, tls_port, cert)
    cfg = {
        "listen": [{"address": "127.0.0.1", "port": port, "tls": "starttls"},
                   {"address": "127.0.0.1", "port": tls_port, "tls": "implicit"}],
        "tls": {"cert": cert, "key": key},
        "auth": {"passwd_file": passwd_file, "plaintext": "tls-only"},
        "user": POPD, "group": POPD, "login_user": LOGIN, "login_group": LOGIN,
        "broker_user": AUTH, "broker_group": AUTH,
        "login_chroot": os.path.join(base, "empty"),
        "pidfile": os.path.join(base, "popd.pid"),
        "mail": {"mbox": os.path.join(spool, "%u"), "state_dir": os.path.join(base, "state"),
                 "first_valid_uid": DEMO, "first_valid_gid": DEMO},
        "limits": {"max_children": 16, "spare_children": 2},
        "logging": {"target": "stderr", "level": "info"},
    }
    config = os.path.join(base, "popd.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    os.chmod(config, 0o644)
    return config, cert, mbox


def instructions(base, port, tls_port, cert, mbox, kept):
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    where = (f"kept in {base}" if kept else
             f"in {base} (removed when the demo stops)")
    return f"""
popd demo (pid {os.getpid()}): files {where}
  account demo, password demo, 2 messages in {mbox}
  STLS on 127.0.0.1:{port}, implicit TLS on 127.0.0.1:{tls_port}
  self-signed certificate {cert} (localhost, 127.0.0.1)

Connect with:
  curl --cacert {cert} --ssl-reqd -u demo:demo pop3://127.0.0.1:{port}/     # STLS, LIST
  curl --cacert {cert} -u demo:demo pop3s://127.0.0.1:{tls_port}/1          # implicit TLS, RETR 1
  openssl s_client -quiet -starttls pop3 -connect 127.0.0.1:{port} -CAfile {cert}
  python3 -c "import poplib, ssl; p = poplib.POP3('127.0.0.1', {port}); p.stls(context=ssl.create_default_context(cafile='{cert}')); p.user('demo'); p.pass_('demo'); print(p.stat()); print(b'\\n'.join(p.retr(1)[1]).decode()); p.quit()"
  python3 -c "import poplib, ssl; p = poplib.POP3_SSL('127.0.0.1', {tls_port}, context=ssl.create_default_context(cafile='{cert}')); p.user('demo'); p.pass_('demo'); print(p.list()); p.quit()"
  fetchmail -f {base}/fetchmailrc --nodetach --nosyslog     # STLS; into {base}/fetched/fetchmail.mbox
  getmail --getmaildir {base}/getmail --rcfile getmailrc    # TLS; into {base}/fetched/getmail.mbox
  mutt -n -F {base}/muttrc                                   # TLS; q quits

popd itself: {venv}/bin/popd (popd -c {base}/popd.yaml --check-config),
manual pages: man -l {venv}/share/man/man8/popd.8 (and man5/popd.yaml.5);
scripts/popd-setup --install-venv links both into /usr/sbin and /usr/local/share/man.

Stop with Ctrl-C, or: kill {os.getpid()}
""".lstrip("\n")


class Stop(Exception):
    """A signal arrived before popd was started."""


def wait_ready(proc, port):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.makefile("rb").readline().startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    port = choose_port(args.port, 1110)
    tls_port = choose_port(args.tls_port, 1995, taken=(port,))
    kept = args.dir is not None
    if kept:
        base = os.path.abspath(args.dir)
        closed = unreachable(base)
        if closed:
            sys.exit(f"demo: {closed} is not searchable by others, and popd's unprivileged "
                     f"processes must reach {base}; choose a directory under /tmp or /srv")
        os.makedirs(base, exist_ok=True)
        if os.listdir(base):
            sys.exit(f"demo: {base} is not empty; give an empty or new directory")
    else:
        base = tempfile.mkdtemp(prefix="popd-demo-")
    proc, stop = None, []

    def on_signal(signum, frame):
        # Ctrl-C reaches popd too (same process group); TERM and HUP are
        # passed on.  Before popd runs: straight to the clean-up.
        stop.append(signum)
        if proc is None:
            raise Stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        config, cert, mbox = prepare(base, port, tls_port)
        proc = subprocess.Popen([sys.executable, "-m", "popd", "-c", config, "-f"],
                                stdin=subprocess.DEVNULL)
        if not wait_ready(proc, port):
            if not stop:
                print(f"demo: popd did not start (exit {proc.poll()}); see above",
                      file=sys.stderr)
            return 1
        print(instructions(base, port, tls_port, cert, mbox, kept), flush=True)
        code = proc.wait()
        return 0 if stop else code
    except Stop:
        return 130
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not kept:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
