"""`popd`: arguments, exit codes, one line per configuration problem.

Runs in: the launcher, which becomes the supervisor (with -f) or forks the
daemon that does and waits for its word (daemonize.py).  Everything that
can fail is reported while it can still reach the terminal and the exit
code: the config, the pid file, the directories, the sockets, the TLS key,
the auth broker; without -f the daemon reports them through the launcher.
"""
import argparse
import os
import sys

# A slot's code first, all of it: a session copies every page its code and
# constants sit on, and what is imported together shares pages.  Imported
# before the supervisor's modules, a slot's objects are not spread among
# theirs (bench/session_memory.py: about 100 kB less per session).
import popd.slot.child  # noqa: F401,I001  (first: see above)
import popd.slot.warmup  # noqa: F401,I001  (run by the spawner, part of the slot code)
from popd import __version__, config
from popd.supervisor import daemonize, startup_checks
from popd.supervisor import loop as supervisor
from popd.unix import logsetup, proctitle, seccomp


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="popd", description="Privilege-separated POP3 server for mbox spools.",
        epilog="popd ctl status|who|stats|metrics|kick ...: ask the running server "
               "(popd(8), CONTROL).")
    p.add_argument("-c", "--config", default=config.DEFAULT_PATH, metavar="FILE",
                   help=f"configuration file (default {config.DEFAULT_PATH})")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (systemd, tests); without it popd "
                        "detaches and exits 0 once it serves")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and the files it names (as "
                        "root), and exit (0 = valid)")
    p.add_argument("--version", action="version", version=f"popd {__version__}")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        from popd import ctl          # the admin's client: not part of the daemon's image
        return ctl.main(argv[1:])
    args = parse_args(argv)
    # Absolute: the daemon works in "/", and SIGHUP reads the file again.
    path = os.path.abspath(args.config)
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        for problem in e.problems:
            print(f"popd: {problem}", file=sys.stderr)
        return 1
    if args.check_config:
        return check_files(cfg, args.config)
    if os.geteuid() != 0:
        print("popd: must be started as root (it binds ports and drops "
              "privileges per process)", file=sys.stderr)
        return 1
    daemonize.tighten_umask()
    if args.foreground:
        return run(cfg, daemonize.ForegroundReport())
    return daemonize.launch(cfg.logging.target == "stderr",
                            lambda report: run(cfg, report))


def check_files(cfg, shown_path):
    """--check-config after the configuration itself loaded: the checks a
    start runs on the files it trusts, and the TLS key loaded, creating
    nothing.  They need root (the key and passwd file are root's); another
    user gets the configuration checked and is told the rest was not."""
    if os.geteuid() != 0:
        print(f"popd: {shown_path}: configuration is valid; files not checked "
              f"(run as root to check them)")
        return 0
    problems = startup_checks.problems(cfg, create=False)
    if cfg.login_seccomp == "required":
        # A start refuses this too (supervisor/loop.py, serve).
        problem = seccomp.startup_problem(cfg.login_seccomp)
        if problem:
            problems.append(problem)
    for problem in problems:
        print(f"popd: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"popd: {shown_path}: configuration is valid")
    return 0


def run(cfg, report):
    """Runs in the process that becomes the supervisor (the launcher with
    -f, the detached daemon without): logging, the pid file, then serve.
    Problems go to `report`: stderr, or the launcher's pipe."""
    proctitle.configure(cfg.logging.verbose_proctitle)
    try:
        logsetup.setup(cfg.logging)
    except OSError as e:
        report.failed([f"logging.syslog_address: cannot reach "
                       f"{cfg.logging.syslog_address}: {e.strerror}; is the "
                       f"syslog daemon running?"])
        return 1
    # Taken before anything binds, so a second popd says "already running"
    # rather than "address in use"; and in this process, so the pid is the
    # supervisor's.
    try:
        pidfile = daemonize.Pidfile.acquire(cfg.pidfile)
    except daemonize.PidfileError as e:
        report.failed([str(e)])
        return 1
    try:
        return supervisor.serve(cfg, on_ready=report.ready, on_stopping=report.stopping)
    except supervisor.StartupError as e:
        report.failed(str(e).splitlines())
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        pidfile.remove()


if __name__ == "__main__":
    sys.exit(main())
