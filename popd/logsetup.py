"""Log handlers for every process, and sanitize() for client-supplied text.

Runs in: all processes.  Each process calls setup() right after it is
forked, so a syslog socket is never shared between processes and every
line carries the pid of the process that wrote it.  The front cannot reach
syslog from its chroot, so its handler forwards records to its child as
LOG frames (front.py); the child logs them with a "front:" prefix.
"""
import logging
import logging.handlers
import sys

LOGGER_NAME = "popd"
log = logging.getLogger(LOGGER_NAME)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR}
_FORMAT = "popd[%(process)d]: %(message)s"


def setup(logging_cfg, handler=None):
    """(Re)configure the popd logger in this process."""
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    if handler is None:
        if logging_cfg.target == "syslog":
            handler = logging.handlers.SysLogHandler(
                address=logging_cfg.syslog_address,
                facility=logging.handlers.SysLogHandler.LOG_MAIL)
        else:
            handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    log.addHandler(handler)
    if log.level != _LEVELS[logging_cfg.level]:
        # setLevel clears every logger's cache: skipped when nothing
        # changes, as in each forked process.
        log.setLevel(_LEVELS[logging_cfg.level])
    log.propagate = False
    return handler


def handler_fds():
    """fds the current log handlers hold, so close_fds() keeps them."""
    fds = set()
    for h in log.handlers:
        if isinstance(h, logging.handlers.SysLogHandler) and h.socket:
            fds.add(h.socket.fileno())
    return fds


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
    return level if isinstance(level, int) else _LEVELS.get(level, logging.INFO)
