"""`popd ctl`: ask the running supervisor over its control socket.

Runs in: the caller's shell (root, or a member of control_group).  It
sends one request line (supervisor/control.py has the vocabulary), reads
the answer to its end and prints it: a table for people, the JSON with
--json, OpenMetrics text for `metrics` (for node_exporter's textfile
collector: `popd ctl metrics > /var/lib/node_exporter/popd.prom.$$ && mv ...`).
Exit status: 0 answered, 1 the server said no (or is not running), 2 usage.
"""
import argparse
import json
import socket
import sys
import time

from popd import config
from popd.supervisor import control

USAGE_COMMANDS = "status | who | stats | metrics | kick user|address|pid VALUE"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="popd ctl", description="Ask a running popd.")
    p.add_argument("-c", "--config", default=config.DEFAULT_PATH, metavar="FILE",
                   help="configuration file, for the pid file's directory (default "
                        f"{config.DEFAULT_PATH})")
    p.add_argument("-s", "--socket", metavar="PATH", help="the control socket itself")
    p.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    p.add_argument("command", nargs="+", help=USAGE_COMMANDS)
    return p.parse_args(argv)


def ask(path, request, timeout=10.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(request.encode("ascii") + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                # refused at once: its one line may be waiting
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def main(argv):
    args = parse_args(argv)
    path = args.socket
    if path is None:
        try:
            path = control.socket_path(config.load(args.config))
        except config.ConfigError as e:
            for problem in e.problems:
                print(f"popd ctl: {problem}", file=sys.stderr)
            return 1
    request = " ".join(args.command)
    if not request.isascii() or len(request) > 200:
        print("popd ctl: the request must be short ASCII", file=sys.stderr)
        return 2
    try:
        answer = ask(path, request)
    except PermissionError:
        print(f"popd ctl: {path}: permission denied (root, or a member of "
              f"control_group)", file=sys.stderr)
        return 1
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"popd ctl: {path}: no popd is listening there (is it running?)",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"popd ctl: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    text = answer.decode("utf-8", "replace")
    if not text:
        print(f"popd ctl: {path}: closed without an answer", file=sys.stderr)
        return 1
    if text.startswith("error: "):
        print(f"popd ctl: {text[7:].strip()}", file=sys.stderr)
        return 1
    if args.json or args.command[0] == "metrics":
        sys.stdout.write(text)
        return 0
    print(render(args.command[0], json.loads(text)))
    return 0


def render(command, data):
    if command == "who":
        rows = [("SESSION", "PID", "USER", "ADDRESS", "TLS", "STATE", "SINCE", "BYTES")]
        for s in data:
            rows.append((s["session"], str(s["pid"]), s["user"] or "-", s["address"],
                         s["tls"] or s["listener"], s["state"],
                         time.strftime("%H:%M:%S", time.localtime(s["since"])),
                         str(s["bytes_sent"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
                         for r in rows)
    if command == "kick":
        return "\n".join([f"kicked {k['session']} pid {k['pid']} user {k['user']} "
                          f"from {k['address']}" for k in data["kicked"]]
                         or ["no matching session"])
    return "\n".join(_flatten(data))


def _flatten(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield f"{prefix}{key}: " + ", ".join(
                ":".join(str(v) for v in item.values()) if isinstance(item, dict)
                else str(item) for item in value)
        else:
            yield f"{prefix}{key}: {value}"
