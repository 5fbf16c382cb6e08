"""The metrics exporter process: its drop, its loop, its one question.

Runs in: the metrics exporter, forked by the supervisor (still root for
its first lines, until sandbox_front).  The loop is select() over the
listening socket, the clients and the supervisor's channel: at most
limits.MAX_METRICS_CLIENTS clients at once (the rest wait in the kernel's
backlog), each with limits.METRICS_REQUEST_MAX bytes for its request and
limits.METRICS_CLIENT_TIMEOUT seconds for the whole exchange.  For each
complete request to /metrics it asks the supervisor (METRICS_ASK) and
waits at most limits.METRICS_ANSWER_TIMEOUT for the text; a late answer
is read and dropped later.  The supervisor never speaks first: anything
else on its channel, or its end, ends the exporter.
"""
import enum
import select
import signal
import socket
import time

from popd import ipc, limits
from popd.exporter import http
from popd.ipc import Channel, Role
from popd.unix import logsetup, privileges, process, proctitle, seccomp
from popd.unix.logsetup import log


class ExporterState(enum.Enum):
    READY = "ready"            # no question out
    ASKING = "asking"          # METRICS_ASK sent, METRICS_TEXT pieces owed


class Client:
    def __init__(self, sock, deadline):
        self.sock, self.deadline = sock, deadline
        self.inbuf = b""
        self.out = None                 # the answer, once the request is in


class Exporter:
    def __init__(self, listen_sock, sup_sock):
        self.listen, self.sup = listen_sock, sup_sock
        self.clients = {}               # socket -> Client
        self.owed = False               # an answer that came too late is due

    def run(self):
        while True:
            now = time.monotonic()
            for client in [c for c in self.clients.values() if c.deadline <= now]:
                self.drop(client)
            reading = [self.sup] + [c.sock for c in self.clients.values() if c.out is None]
            if len(self.clients) < limits.MAX_METRICS_CLIENTS:
                reading.append(self.listen)
            writing = [c.sock for c in self.clients.values() if c.out is not None]
            wait = min((c.deadline for c in self.clients.values()), default=now + 60) - now
            readable, writable, _ = select.select(reading, writing, [], max(wait, 0.01))
            if self.sup in readable:
                self.read_late_answer()          # raises when the exporter must end
            if self.listen in readable:
                self.accept()
            for sock in readable:
                if sock in self.clients:
                    self.on_readable(self.clients[sock])
            for sock in writable:
                if sock in self.clients:
                    self.on_writable(self.clients[sock])

    def accept(self):
        try:
            sock, _ = self.listen.accept()
        except OSError:                 # gone before accept, EMFILE: the next turn
            return
        sock.setblocking(False)
        self.clients[sock] = Client(sock, time.monotonic() + limits.METRICS_CLIENT_TIMEOUT)

    def on_readable(self, client):
        try:
            data = client.sock.recv(limits.METRICS_REQUEST_MAX + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        client.inbuf += data
        end = http.end_of_head(client.inbuf)
        if end is None:
            if len(client.inbuf) > limits.METRICS_REQUEST_MAX:
                client.out = http.refusal(431, "request too long")
            return
        if end > limits.METRICS_REQUEST_MAX:
            client.out = http.refusal(431, "request too long")
            return
        try:
            method = http.parse_head(client.inbuf[:end])
        except http.Refusal as r:
            client.out = http.refusal(r.status, r.text)
            return
        text = self.ask()
        if text is None:
            client.out = http.refusal(503, "the supervisor did not answer", method == "HEAD")
        else:
            client.out = http.answer(200, text, method == "HEAD")

    def on_writable(self, client):
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self.drop(client)

    def drop(self, client):
        del self.clients[client.sock]
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()

    def ask(self):
        """The metrics text from the supervisor, or None if it did not come
        within limits.METRICS_ANSWER_TIMEOUT (it is then read later)."""
        if self.owed:
            return None
        ipc.send(self.sup, "METRICS_ASK")
        self.owed = True
        deadline = time.monotonic() + limits.METRICS_ANSWER_TIMEOUT
        parts = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sup], [], [], left)[0]:
                return None
            more = self.read_piece(parts)
            if not more:
                return b"".join(parts)

    def read_late_answer(self):
        """The supervisor's channel is readable outside ask(): a piece of an
        answer that came too late (dropped), or, with none owed, the
        channel's end (Closed) or a frame nobody asked for (Violation)."""
        self.read_piece([], ExporterState.ASKING if self.owed else ExporterState.READY)

    def read_piece(self, parts, state=ExporterState.ASKING):
        msg = ipc.recv(self.sup, Channel.SUPERVISOR_EXPORTER, Role.EXPORTER, state)
        parts.append(msg.text)
        if sum(map(len, parts)) > limits.METRICS_TEXT_MAX:
            raise ipc.Violation(f"metrics text over {limits.METRICS_TEXT_MAX} bytes")
        if not msg.more:
            self.owed = False
        return msg.more


def run(cfg, listen_sock, sup_sock):
    """Entry point in the freshly forked exporter (still root)."""
    process.after_fork(keep={listen_sock.fileno(), sup_sock.fileno()})
    logsetup.setup(cfg.logging)
    proctitle.set_title(proctitle.EXPORTER)
    privileges.die_with_parent(signal.SIGKILL)
    privileges.sandbox_front(cfg.login_chroot, cfg.login_user, cfg.login_group)
    # The address-space cap of a session (the interpreter alone maps ~100 MiB).
    privileges.limit_resources(limits.EXPORTER_FILES, cfg.limits.session_memory)
    seccomp.confine_front(cfg.login_seccomp, role="exporter")
    ipc.send(sup_sock, "EXPORTER_READY")
    try:
        Exporter(listen_sock, sup_sock).run()
    except ipc.Closed:
        return                          # the supervisor is stopping
    except ipc.Violation as e:
        log.error("metrics exporter: from the supervisor: %s", e)
        raise SystemExit(1) from None
