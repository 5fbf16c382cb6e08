"""`popd`: arguments, exit codes, one line per configuration problem.

Runs in: the launcher, which becomes the supervisor.  Everything that can
fail is checked here, while errors can still reach the terminal and the
exit code: the config, the directories, the sockets, the auth broker.
"""
import argparse
import os
import sys

from . import __version__, config, logsetup, proctitle, supervisor


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="popd", description="Privilege-separated POP3 server for mbox spools.")
    p.add_argument("-c", "--config", default=config.DEFAULT_PATH, metavar="FILE",
                   help=f"configuration file (default {config.DEFAULT_PATH})")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (systemd, tests)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit (0 = valid)")
    p.add_argument("--version", action="version", version=f"popd {__version__}")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        for problem in e.problems:
            print(f"popd: {problem}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"popd: {args.config}: configuration is valid")
        return 0
    if not args.foreground:
        print("popd: detaching is not implemented in this version; run with -f "
              "(under systemd, Type=simple)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("popd: must be started as root (it binds ports and drops "
              "privileges per process)", file=sys.stderr)
        return 1
    proctitle.configure(cfg.logging.verbose_proctitle)
    try:
        logsetup.setup(cfg.logging)
    except OSError as e:
        print(f"popd: logging.syslog_address: cannot reach "
              f"{cfg.logging.syslog_address}: {e.strerror}; is the syslog "
              f"daemon running?", file=sys.stderr)
        return 1
    try:
        return supervisor.serve(cfg)
    except supervisor.StartupError as e:
        for line in str(e).splitlines():
            print(f"popd: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
