"""SIGHUP: read the configuration again and apply it to new slots.

Runs in: the supervisor (root).

Sessions in progress keep what they started with.  A configuration that
does not load or fails the start-up checks, a TLS certificate that does
not load, or a broker that does not start: logged, and the running
configuration stays.  Keys that need a restart keep their running values,
and the log says which.
"""
import gc

from popd import config
from popd.supervisor import startup_checks
from popd.supervisor.pool import SlotState
from popd.supervisor.spawner import SpawnerLink
from popd.unix import logsetup, proctitle, tls
from popd.unix.logsetup import log


def reload(sup):
    new = read_configuration(sup.cfg)
    if new is None:
        return
    link = start_broker_and_tls(sup, new)
    if link is None:
        return
    sup.cfg = new
    sup.stats.reloads += 1
    apply_logging(new)
    sup.admission.max_children = new.limits.max_children
    sup.admission.max_per_ip = new.limits.max_per_ip
    sup.retire(sup.broker)
    sup.broker = link
    # The spawner holds the old configuration and TLS context; slots
    # are forked by a new one from now on.
    sup.spawner.stop()
    gc.collect()
    gc.freeze()
    sup.spawner = SpawnerLink.start(new)
    # Idle slots hold the old configuration and the old broker's
    # channels: replace them.  Busy ones finish as they are.
    for slot in list(sup.pool.slots.values()):
        if slot.state in (SlotState.STARTING, SlotState.IDLE):
            slot.retiring = True
            sup.kill_slot(slot)
            sup.pool.idle_forget(slot)
    log.info("SIGHUP: configuration reloaded from %s", new.path)


def read_configuration(running):
    """The configuration file as it is now, checked as a start checks it,
    with the running values of the keys that need a restart; None (and a
    log line) if it cannot be used."""
    try:
        new = config.load(running.path)
    except config.ConfigError as e:
        log.error("SIGHUP: configuration refused, the running one stays: %s",
                  "; ".join(e.problems))
        return None
    problems = startup_checks.problems(new)
    if problems:
        log.error("SIGHUP: configuration refused, the running one stays: %s",
                  "; ".join(problems))
        return None
    fixed = [k.name for k in config.KEYS if not k.reloadable
             and config.value(new, k.name) != config.value(running, k.name)]
    for name in fixed:
        config.set_value(new, name, config.value(running, name))
    if fixed:
        log.warning("SIGHUP: %s changed; these need a restart, the running "
                    "values stay", ", ".join(fixed))
    return new


def start_broker_and_tls(sup, new):
    """A broker for `new`, then its TLS context installed; the new
    broker's link, or None (logged, the running broker and context kept)."""
    # The new broker is forked before the new TLS context is built, and
    # after the old one is dropped: OpenSSL clears a private key when it
    # frees it, so the broker starts without a usable copy of the key.
    old_ctx = tls.context()
    tls.install(None)
    gc.collect()
    try:
        link = sup.start_broker(new)
    except startup_checks.StartupError as e:
        tls.install(old_ctx)
        log.error("SIGHUP: %s; the running configuration stays", e)
        return None
    ctx = None
    if any(listen.tls != "none" for listen, _ in sup.sockets):
        try:
            ctx = tls.build_context(new.tls)
        except tls.TLSConfigError as e:
            tls.install(old_ctx)
            sup.retire(link)
            log.error("SIGHUP: %s; the running configuration stays", e)
            return None
    del old_ctx
    tls.install(ctx)
    return link


def apply_logging(new):
    try:
        logsetup.setup(new.logging)
    except OSError as e:                   # syslog unreachable: say so on stderr
        logsetup.setup(new.logging, handler=logsetup.StreamHandler())
        log.error("SIGHUP: cannot reach syslog at %s (%s); logging to stderr",
                  new.logging.syslog_address, e.strerror)
    proctitle.configure(new.logging.verbose_proctitle)
