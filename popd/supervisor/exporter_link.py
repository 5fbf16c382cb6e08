"""The supervisor's handle on the metrics exporter (metrics.listen).

Runs in: the supervisor.  The supervisor binds the listening socket at
start (listeners.py) and forks the exporter, which sandboxes itself and
serves HTTP (exporter/); the supervisor never reads a byte a scraper
sent.  On the exporter's channel it accepts EXPORTER_READY once, then
only METRICS_ASK, answered at once with the text in METRICS_TEXT pieces;
anything else, or a peer that stops reading, gets the exporter killed.
An exporter that exits is forked again after
limits.EXPORTER_RESTART_DELAY; POP3 service never depends on it (a fork
that fails is logged and tried again after the same delay).  The first
exporter is forked before the TLS key is loaded; one forked again later
comes from the running supervisor and so holds the TLS context in memory,
as every front does (same user, same sandbox).  The text is rendered at
most once per limits.METRICS_RENDER_INTERVAL, whatever the exporter asks.
"""
import enum
import os
import selectors
import signal
import time

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.supervisor import listeners
from popd.unix import process
from popd.unix.logsetup import log

PIECE = limits.MAX_FRAME - 64          # METRICS_TEXT's text field, with room to spare


class ExporterLinkState(enum.Enum):
    STARTING = "starting"               # until EXPORTER_READY
    READY = "ready"                     # it may ask


class ExporterLink:
    def __init__(self, cfg, listen_sock, sel, render):
        self.cfg, self.listen, self.sel = cfg, listen_sock, sel
        self.render = render            # render() -> the metrics text (bytes)
        self.pid = self.pidfd = self.sock = None
        self.state = None
        self.restart_at = None          # monotonic time of the next fork
        self.text, self.rendered = b"", None     # the last text, and when

    def start(self):
        """Fork an exporter.  Raises OSError (no fds, no processes) with
        nothing left behind."""
        ours, theirs = ipc.socketpair()
        try:
            pid = process.fork_role("metrics exporter", _run_exporter, self.cfg,
                                    self.listen, theirs)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            ours.close()                        # it exits on its channel's end
            raise
        self.pid, self.sock, self.pidfd = pid, ours, pidfd
        self.state = ExporterLinkState.STARTING
        self.restart_at = None
        self.sel.register(self.sock, selectors.EVENT_READ, (self.on_message, None))
        self.sel.register(self.pidfd, selectors.EVENT_READ, (self.on_exit, None))

    def on_message(self, _):
        try:
            msg = ipc.recv(self.sock, Channel.SUPERVISOR_EXPORTER, Role.SUPERVISOR, self.state)
        except (BlockingIOError, InterruptedError):
            return
        except ipc.Closed:
            self.sel.unregister(self.sock)      # its exit (pidfd) comes next
            return
        except ipc.Violation as e:
            self.kill(f"sent {e}")
            return
        if msg.name == "EXPORTER_READY":
            self.state = ExporterLinkState.READY
            log.info("metrics: serving http://%s/metrics (pid %d)",
                     listeners.label(self.cfg.metrics.listen), self.pid)
            return
        now = time.monotonic()
        if self.rendered is None or now - self.rendered >= limits.METRICS_RENDER_INTERVAL:
            self.text, self.rendered = self.render(), now
        text = self.text
        try:
            for start in range(0, max(len(text), 1), PIECE):   # one frame at least
                ipc.send(self.sock, "METRICS_TEXT", text=text[start:start + PIECE],
                         more=int(start + PIECE < len(text)))
        except OSError as e:                    # not reading its answers
            self.kill(f"cannot take its answer ({e.strerror or e})")

    def kill(self, why):
        log.warning("metrics exporter (pid %d) %s; killing it", self.pid, why)
        process.send_signal(self.pidfd, signal.SIGKILL)

    def on_exit(self, _):
        """It is gone (the supervisor's waitpid loop reaps it): forget it,
        and fork another later unless the supervisor is stopping."""
        self.forget()
        log.warning("metrics exporter exited; another in %d s",
                    limits.EXPORTER_RESTART_DELAY)
        self.restart_at = time.monotonic() + limits.EXPORTER_RESTART_DELAY

    def forget(self, grace=None):
        """Close our ends; with `grace`, first wait that long for it to
        exit on its channel's end (then SIGKILL)."""
        if self.sel.get_map().get(self.sock.fileno()) is not None:
            self.sel.unregister(self.sock)
        self.sock.close()
        if grace is not None:
            process.wait_or_kill(self.pidfd, grace)
        self.sel.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pid = self.pidfd = self.sock = None

    def tick(self, now):
        if self.restart_at is not None and now >= self.restart_at:
            try:
                self.start()
            except OSError as e:
                log.error("metrics exporter: cannot fork another (%s); trying again "
                          "in %d s", e.strerror or e, limits.EXPORTER_RESTART_DELAY)
                self.restart_at = now + limits.EXPORTER_RESTART_DELAY

    def stop(self):
        """Close its channel (it exits on that) and the listening socket."""
        self.restart_at = None
        if self.pid is not None:
            self.forget(grace=limits.FRONT_KILL_GRACE)
        self.listen.close()


def _run_exporter(cfg, listen_sock, sock):
    from popd.exporter import server
    server.run(cfg, listen_sock, sock)
