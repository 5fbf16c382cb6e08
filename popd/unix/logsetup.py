"""popd's logger, its three destinations, and sanitize() for client text.

Runs in: all processes.  Each process calls setup() right after it is
forked, so a syslog socket is never shared between processes and every
line carries the pid of the process that wrote it.  The front cannot reach
syslog from its chroot, so its handler forwards records to its child as
LOG frames (front.py); the child logs them with a "front:" prefix.

Why not the standard logging module: importing it imports threading, and
both register fork handlers (Python code that runs in every new process).
Measured on popd's image, those two handlers dirty ~630 kB of copy-on-write
pages in every child and front before popd runs a line (840 kB against
212 kB with them disabled), the largest single share of a session's memory
and of its page faults.  popd needs one logger with a level and one
destination: that is this module.
"""
import os
import socket
import time
import traceback

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
# syslog(3) priorities for those levels, and the mail facility (RFC 5424).
_SYSLOG_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}
LOG_MAIL = 2


def _line(text):
    return f"popd[{os.getpid()}]: {text}"


def timestamp():
    """Local time to the millisecond, with its UTC offset (ISO 8601)."""
    now = time.time()
    zone = time.strftime("%z", time.localtime(now))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + \
        f".{int(now % 1 * 1000):03d}{zone[:3]}:{zone[3:]}"


class Handler:
    """A destination: emit() gets the level and the message text."""

    def emit(self, level, text):
        raise NotImplementedError

    def fileno(self):
        """The fd this handler writes to, if after_fork must keep it."""
        return None

    def close(self):
        pass


class StreamHandler(Handler):
    """Lines on stderr (fd 2), one write each; with `timestamps`, each
    starts with the local time (the init script's log file has no other)."""

    def __init__(self, timestamps=False):
        self.timestamps = timestamps

    def emit(self, level, text):
        line = _line(text)
        if self.timestamps:
            line = f"{timestamp()} {line}"
        try:
            os.write(2, line.encode("utf-8", "backslashreplace") + b"\n")
        except OSError:
            pass


class NullHandler(Handler):
    def emit(self, level, text):
        pass


class SyslogHandler(Handler):
    """Datagrams "<PRI>popd[PID]: text" to the syslog socket, as
    logging.handlers.SysLogHandler wrote them (NUL-terminated); a stream
    socket if the daemon listens on one.  Connecting fails at once (an
    unreachable syslog is a start-up error); a send that fails reconnects
    once, then drops the line: there is nowhere else to say so."""

    def __init__(self, address, facility=LOG_MAIL):
        self.address = address
        self.facility = facility
        self.sock = None
        self._connect()

    def _connect(self):
        self.close()
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                if kind == socket.SOCK_STREAM:
                    raise
                continue
            self.sock = sock
            return

    def emit(self, level, text):
        data = (f"<{self.facility << 3 | _SYSLOG_PRIORITY[level]}>{_line(text)}\0"
                .encode("utf-8", "backslashreplace"))
        for attempt in (1, 2):
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(data)
                return
            except OSError:
                if attempt == 2:
                    return
                try:
                    self._connect()
                except OSError:
                    return

    def fileno(self):
        return self.sock.fileno() if self.sock else None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Logger:
    """log.info("text %s", arg) and friends, formatted "popd[PID]: text".

    A line about one connection starts with its session id in brackets,
    "popd[PID]: [id] text", the same in every process that serves it (the
    supervisor makes the id at accept): `session` names it per line (the
    supervisor and the broker serve many connections), `self.session` for
    the whole process (a slot's child, and its front through it)."""

    def __init__(self):
        self.level = INFO
        self.handler = StreamHandler()
        self.session = None

    def log(self, level, msg, *args, exc_info=False, session=None):
        if level < self.level:
            return
        text = msg % args if args else msg
        if exc_info:
            text += "\n" + traceback.format_exc().rstrip("\n")
        session = session or self.session
        self.handler.emit(level, f"[{session}] {text}" if session else text)

    def debug(self, msg, *args, session=None):
        self.log(DEBUG, msg, *args, session=session)

    def info(self, msg, *args, session=None):
        self.log(INFO, msg, *args, session=session)

    def warning(self, msg, *args, session=None):
        self.log(WARNING, msg, *args, session=session)

    def error(self, msg, *args, session=None):
        self.log(ERROR, msg, *args, session=session)

    def exception(self, msg, *args, session=None):
        self.log(ERROR, msg, *args, exc_info=True, session=session)


log = Logger()


def setup(logging_cfg, handler=None):
    """(Re)configure the logger in this process: the configured level and
    destination, or `handler`.  Raises OSError if syslog is unreachable."""
    if handler is None:
        if logging_cfg.target == "syslog":
            handler = SyslogHandler(logging_cfg.syslog_address)
        else:
            handler = StreamHandler(stderr_timestamps(logging_cfg))
    log.handler.close()
    log.handler = handler
    log.level = _LEVELS[logging_cfg.level]
    return handler


# Read once, at import: os.environ is Python code (a mapping that encodes
# and decodes), and every slot sets up its logging again.
_UNDER_JOURNAL = "JOURNAL_STREAM" in os.environ


def stderr_timestamps(logging_cfg):
    """logging.timestamps; unset: on, unless systemd's journal (which
    stamps every line itself) is our stderr."""
    if logging_cfg.timestamps is not None:
        return logging_cfg.timestamps
    return not _UNDER_JOURNAL


def setup_silent():
    """Log nothing from here on (the lock helper: no channel to write to)."""
    log.handler.close()
    log.handler = NullHandler()


def handler_fds():
    """fds the current handler holds, so close_fds() keeps them."""
    fd = log.handler.fileno()
    return set() if fd is None else {fd}


def sanitize(text, limit=200):
    """Client-supplied text made safe for a log line: printable ASCII only
    (anything else as \\xNN), quotes escaped, bounded length."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    out = []
    for b in text[:limit]:
        if 0x20 <= b < 0x7F and b not in (0x22, 0x5C):
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def level_number(level):
    """A LOG frame's level, bounded to the four popd uses."""
    if not isinstance(level, int):
        return _LEVELS.get(level, INFO)
    return max(DEBUG, min(ERROR, level - level % 10)) if level >= DEBUG else DEBUG
