"""Real mail clients over TLS against the real daemon: poplib, curl,
openssl s_client and fetchmail.  Every test compares what the client
fetched, byte for byte, with what was delivered to the mbox.  A test is
skipped only when its client binary is missing (.ci/run installs them)."""
import os
import poplib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon import USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

PASSWORD = USERS["alice"][0]
MESSAGES = [
    b"From: a@example.org\nTo: alice@example.org\nSubject: dots\n\n"
    b"Hello\n.one dot\n..two dots\n.\nthe line above is a lone dot\n",
    b"From: b@example.org\nSubject: quoted\n\n>From a quoted line\n\n\ntwo blank lines above\n",
    b"From: c@example.org\nSubject: 8bit\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n\n" + "Grüße, ½ €\n".encode() + b"x" * 900 + b"\n",
    b"From: d@example.org\nSubject: big\n\n"
    + b"".join(b"line %06d " % i + b"y" * 70 + b"\n" for i in range(4000)),
]
MBOX = b"".join(b"From sender@example.org Thu Nov 26 10:00:00 2026\n" + m + b"\n"
                for m in MESSAGES)
AS_SENT = [m.replace(b"\n", b"\r\n") for m in MESSAGES]        # CRLF, unstuffed


def need(binary):
    return pytest.mark.skipif(shutil.which(binary) is None, reason=f"{binary} not installed")


@pytest.fixture(scope="module")
def daemon():
    with Daemon(tls=True, limits={"max_children": 16, "max_per_ip": 16}) as d:
        yield d


@pytest.fixture
def popd(daemon):
    daemon.write_mbox("alice", MBOX)          # fresh for every test (some delete)
    return daemon


# -- poplib ----------------------------------------------------------------------

def fetch_all(client):
    client.user("alice")
    client.pass_(PASSWORD)
    count, _ = client.stat()
    got = [b"\r\n".join(client.retr(i)[1]) + b"\r\n" for i in range(1, count + 1)]
    client.quit()
    return got


def test_poplib_stls(popd):
    client = poplib.POP3(popd.host, popd.port, timeout=10)
    client.stls(context=popd.client_context())
    assert fetch_all(client) == AS_SENT


def test_poplib_implicit_tls(popd):
    client = poplib.POP3_SSL(popd.host, popd.tls_port, timeout=10,
                             context=popd.client_context())
    assert fetch_all(client) == AS_SENT


# -- curl ------------------------------------------------------------------------

def curl(popd, url, *args, user=f"alice:{PASSWORD}"):
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(popd.ca_file),
                           "-u", user, *args, url], capture_output=True, timeout=30)


def curl_urls(popd):
    return [("--ssl-reqd", f"pop3://127.0.0.1:{popd.port}/"),       # STLS
            (None, f"pop3s://127.0.0.1:{popd.tls_port}/")]             # implicit


@need("curl")
def test_curl_list_and_retr(popd):
    sizes = [len(m) for m in AS_SENT]
    for flag, url in curl_urls(popd):
        extra = [flag] if flag else []
        run = curl(popd, url, *extra)
        assert run.returncode == 0, run.stderr
        assert run.stdout == b"".join(b"%d %d\r\n" % (i + 1, n) for i, n in enumerate(sizes))
        for i, expected in enumerate(AS_SENT, 1):
            run = curl(popd, url + str(i), *extra)
            assert run.returncode == 0, run.stderr
            assert run.stdout == expected


@need("curl")
def test_curl_wrong_password_is_login_denied(popd):
    for flag, url in curl_urls(popd):
        run = curl(popd, url, *([flag] if flag else []), user="alice:wrong")
        assert run.returncode == 67, run.stderr            # CURLE_LOGIN_DENIED


@need("curl")
def test_curl_without_ssl_reqd_never_sends_the_password(popd):
    # Without --ssl-reqd curl would send the password in the clear to a
    # server that offers USER or SASL there; tls-only offers neither, so
    # curl gives up before sending any credentials.
    run = curl(popd, f"pop3://127.0.0.1:{popd.port}/", "-v")
    assert run.returncode == 67, run.stderr
    sent = [line for line in run.stderr.splitlines() if line.startswith(b"> ")]
    assert sent == [b"> CAPA"], sent


@need("curl")
def test_curl_dele(popd):
    url = f"pop3s://127.0.0.1:{popd.tls_port}/"
    run = curl(popd, url, "-X", "DELE 1", "-I")
    assert run.returncode == 0, run.stderr
    run = curl(popd, url + "1")
    assert run.returncode == 0, run.stderr
    assert run.stdout == AS_SENT[1]


# -- openssl s_client -------------------------------------------------------------

def s_client(popd, *args, commands=b""):
    return subprocess.run(["openssl", "s_client", "-quiet", "-CAfile", str(popd.ca_file),
                           "-verify_return_error", "-verify_hostname", "localhost", *args],
                          input=commands, capture_output=True, timeout=30)


def parse_retr_stream(data):
    """The messages out of a raw POP3 stream: each +OK octets block, unstuffed."""
    out = []
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith(b"+OK") and lines[i].endswith(b"octets"):
            body = []
            i += 1
            while lines[i] != b".":
                body.append(lines[i][1:] if lines[i].startswith(b"..") else lines[i])
                i += 1
            out.append(b"\r\n".join(body) + b"\r\n")
        i += 1
    return out


RETR_ALL = (b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"
            + b"".join(b"RETR %d\r\n" % i for i in range(1, len(MESSAGES) + 1)) + b"QUIT\r\n")


@need("openssl")
def test_openssl_s_client_starttls_and_implicit(popd):
    for args in (["-starttls", "pop3", "-connect", f"127.0.0.1:{popd.port}"],
                 ["-connect", f"127.0.0.1:{popd.tls_port}", "-alpn", "pop3"]):
        run = s_client(popd, *args, commands=RETR_ALL)
        assert run.returncode == 0, run.stderr
        assert parse_retr_stream(run.stdout) == AS_SENT
        assert run.stdout.endswith(b"+OK Bye\r\n") or b"\r\n+OK Bye" in run.stdout
        assert b"unexpected eof" not in run.stderr.lower()      # close_notify was sent


@need("openssl")
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_openssl_old_tls_versions_are_refused(popd, version):
    for args in (["-starttls", "pop3", "-connect", f"127.0.0.1:{popd.port}"],
                 ["-connect", f"127.0.0.1:{popd.tls_port}"]):
        # SECLEVEL=0 so that the client really offers the old version and
        # the refusal is the server's (alert 70, protocol_version).
        run = s_client(popd, *args, version, "-cipher", "DEFAULT@SECLEVEL=0",
                       commands=b"QUIT\r\n")
        assert run.returncode != 0
        assert b"alert protocol version" in run.stderr, run.stderr


@need("openssl")
def test_openssl_tls12_and_tls13_are_served(popd):
    for version in ("-tls1_2", "-tls1_3"):
        run = s_client(popd, "-connect", f"127.0.0.1:{popd.tls_port}", version,
                       commands=b"QUIT\r\n")
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(b"+OK POP3 server ready\r\n")


# -- fetchmail ----------------------------------------------------------------------

def fetchmail(popd, tmp_path, *, implicit, keep=True, uidl=False):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    rc = tmp_path / "fetchmailrc"
    port = popd.tls_port if implicit else popd.port
    rc.write_text(
        "set no bouncemail\nset invisible\n"
        f"poll localhost service {port} protocol pop3 {'uidl' if uidl else ''}\n"
        f'  user "alice" there password "{PASSWORD}" is root here\n'
        f'  {"ssl " if implicit else ""}sslcertck sslcertfile "{popd.ca_file}" '
        'sslproto "TLS1.2+"\n'
        # fetchall would fetch the messages uidl knows as seen.
        f"  {'keep' if keep else 'no keep'} {'' if uidl else 'fetchall'} no rewrite\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$(date +%s%N)'\"\n")
    os.chmod(rc, 0o600)
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--idfile",
                          str(tmp_path / "ids"), "--nosyslog"],
                         capture_output=True, timeout=60, env=env)
    return run, sorted(p.read_bytes() for p in Path(out).iterdir())


@need("fetchmail")
@pytest.mark.parametrize("implicit", [True, False], ids=["ssl", "stls"])
def test_fetchmail_keep(popd, tmp_path, implicit):
    run, got = fetchmail(popd, tmp_path, implicit=implicit)
    assert run.returncode == 0, run.stdout + run.stderr
    assert got == sorted(MESSAGES)              # fetchmail stores LF (stripcr for an mda)
    assert (popd.spool / "alice").read_bytes() == MBOX


@need("fetchmail")
def test_fetchmail_no_keep_deletes(popd, tmp_path):
    run, got = fetchmail(popd, tmp_path, implicit=True, keep=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert got == sorted(MESSAGES)
    assert (popd.spool / "alice").read_bytes() == b""
    run, again = fetchmail(popd, tmp_path, implicit=True, keep=False)
    assert run.returncode == 1                  # 1: no mail
    assert again == got


@need("fetchmail")
def test_fetchmail_uidl_mode_fetches_only_new_mail(popd, tmp_path):
    run, got = fetchmail(popd, tmp_path, implicit=False, uidl=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert got == sorted(MESSAGES)
    run, again = fetchmail(popd, tmp_path, implicit=False, uidl=True)
    assert run.returncode == 1, run.stdout + run.stderr      # nothing new
    assert again == got


@need("fetchmail")
def test_fetchmail_uidl_mode_with_identical_messages(popd, tmp_path):
    """Two identical messages: deleting one never hands its UID to the other,
    so fetchmail's uidl mode fetches exactly the mail that is new."""
    twin = b"From sender@example.org Thu Nov 26 10:00:00 2026\n" + MESSAGES[0] + b"\n"
    popd.write_mbox("alice", twin + twin + MBOX)
    run, got = fetchmail(popd, tmp_path, implicit=False, uidl=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(got) == len(MESSAGES) + 2
    c = poplib.POP3_SSL("localhost", popd.tls_port, context=popd.client_context(), timeout=20)
    c.user("alice")
    c.pass_(PASSWORD)
    c.dele(1)                                    # the first twin
    c.quit()
    run, again = fetchmail(popd, tmp_path, implicit=False, uidl=True)
    assert run.returncode == 1, run.stdout + run.stderr      # the survivor is not "new"
    # A third identical copy arrives: it is new, and only it is fetched.
    popd.write_mbox("alice", (popd.spool / "alice").read_bytes() + twin)
    run, third = fetchmail(popd, tmp_path, implicit=False, uidl=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(third) == len(got) + 1
