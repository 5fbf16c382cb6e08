"""Every file and directory popd trusts, checked before it starts: one
line per problem, naming the file, its owner and mode, and the fix.

Runs in: the supervisor (root) at start and at SIGHUP, and in
`popd --check-config`, which must refuse exactly what a start would
refuse (an ExecStartPre that passes a config the daemon then rejects is
worse than none).  The check-only run creates nothing: a missing state
directory or chroot is one the daemon would create.
"""
import os

from popd.supervisor import trusted_files
from popd.unix import tls


class StartupError(Exception):
    """popd cannot start (or a SIGHUP cannot apply): one line per problem."""


def problems(cfg, create=True):
    """The problem lines for `cfg`; with create=False nothing is made and
    the TLS key and certificate are also loaded, as the daemon loads them
    after the broker is forked."""
    found = [
        trusted_files.root_directory(cfg.mail.state_dir, 0o711, create=create),
        trusted_files.root_directory(cfg.login_chroot, 0o755, must_be_empty=True,
                                     create=create),
        trusted_files.trusted_file(cfg.path, "the configuration", readable_by_others=True),
        "passwd-file" in cfg.auth.backend and trusted_files.trusted_file(
            cfg.auth.passwd_file, "the passwd file", readable_by_others=False,
            group=cfg.broker_group),
        trusted_files.spool_directory(cfg.mail.mbox),
    ]
    if not create:
        # The daemon checks this when it takes the pid file.
        problem = trusted_files.root_directory(os.path.dirname(cfg.pidfile), 0o755,
                                               create=False)
        found.append(problem and f"pidfile: {problem}")
    if uses_tls(cfg):
        # The key: root's, nobody else may write it, others may not read
        # it (group read for e.g. Debian's ssl-cert is fine); the
        # certificate: root's, writable by root only.  Both: every
        # directory up the chain root's and not writable by others.
        tls_problems = [
            trusted_files.trusted_file(cfg.tls.key, "tls.key", readable_by_others=False),
            trusted_files.trusted_file(cfg.tls.cert, "tls.cert", readable_by_others=True),
        ]
        for i, extra in enumerate(cfg.tls.certificates):
            tls_problems += [
                trusted_files.trusted_file(extra.key, f"tls.certificates[{i}].key",
                                           readable_by_others=False),
                trusted_files.trusted_file(extra.cert, f"tls.certificates[{i}].cert",
                                           readable_by_others=True)]
        found += tls_problems
        if not create and not any(tls_problems):
            found.append(tls_load_problem(cfg))
    return [p for p in found if p]


def uses_tls(cfg):
    return any(listen.tls != "none" for listen in cfg.listen)


def tls_load_problem(cfg):
    """What OpenSSL says about the pair: not PEM, encrypted, mismatched,
    ciphers that select nothing.  Loads the key into this process."""
    try:
        tls.build_context(cfg.tls)
    except tls.TLSConfigError as e:
        return str(e)
    return None
