"""Two popd nodes behind Debian's haproxy, on loopback, for the tests and
bench/load_balancer.py.

Each node is a Daemon of its own (own port, config, pid file, log) with a
listener that takes the PROXY protocol from 127.0.0.1 only; both serve
one spool and one state directory, as popd(8) asks of nodes sharing a
spool.  haproxy listens on three ports: `port` balances over both nodes
(leastconn, send-proxy-v2, health checks with PROXY LOCAL), `ports["a"]`
and `ports["b"]` each reach one node, so a test can choose its node.
"""
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from tests.daemon import USERS, Daemon, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def proxy_node(spool, state, users=USERS, limits=None):
    d = Daemon(users=users, limits=limits, extra={
        "proxy_trusted_networks": ["127.0.0.1/32"],
        "mail": {"mbox": str(spool / "%u"), "state_dir": str(state)}})
    cfg = yaml.safe_load(d.config.read_text())
    cfg["listen"][0]["proxy"] = True
    d.config.write_text(yaml.safe_dump(cfg))
    return d


def v2_header(client_ip, client_port, server_ip="127.0.0.1", server_port=110):
    """A PROXY v2 header for TCP over IPv4, as haproxy's send-proxy-v2 writes it."""
    body = (ipaddress.ip_address(client_ip).packed + ipaddress.ip_address(server_ip).packed
            + struct.pack("!HH", client_port, server_port))
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body)) + body


def haproxy_config(port, ports, nodes):
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{d.port} send-proxy-v2 check inter 1s" for name, d in nodes)
    single = "".join(f"""
frontend only_{name}
    bind 127.0.0.1:{ports[name]}
    default_backend node_{name}
backend node_{name}
    server {name} 127.0.0.1:{d.port} send-proxy-v2
""" for name, d in nodes)
    return f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend pop3
    bind 127.0.0.1:{port}
    default_backend popd
backend popd
    balance leastconn
    option tcp-check
    tcp-check expect string +OK
    tcp-check send QUIT\\r\\n
    tcp-check expect string +OK
{servers}
{single}"""


class Balancer:
    """haproxy in the foreground, started and stopped by the test."""

    def __init__(self, nodes):
        self.dir = Path(tempfile.mkdtemp(prefix="popd-haproxy-"))
        self.port = free_port()
        self.ports = {name: free_port() for name, _ in nodes}
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, self.ports, nodes))
        self.log = open(self.dir / "haproxy.log", "w+b")
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                for p in self.ports.values():
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None, self.output()
                time.sleep(0.05)
        raise AssertionError("haproxy did not start: " + self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def shared_dirs():
    """A spool and a state directory for two nodes (removed by the caller)."""
    base = Path(tempfile.mkdtemp(prefix="popd-shared-", dir="/tmp"))
    os.chmod(base, 0o755)
    spool, state = base / "spool", base / "state"
    spool.mkdir(mode=0o755)
    return base, spool, state
