"""popd.yaml: one declaration per key, strict loading, one line per problem.

Runs in: the launcher and the supervisor (which passes the validated
result to the processes it forks).  Nothing changes a configuration once it
is in use: at SIGHUP the supervisor loads a new one and, before using it,
puts back the running values of the keys that need a restart.

Every key is declared once in KEYS with its type, range, default and help;
validation, the `--check-config` output and the documentation check in the
tests all read that table.  YAML is loaded with a safe loader that refuses
duplicate keys (PyYAML silently keeps the last one, so `user: popd` followed
by `user: root` would otherwise load as root).
"""
import grp
import ipaddress
import os
import pwd
import ssl
import types
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from popd import limits, mailpath
from popd.unix.tls import MOZILLA_INTERMEDIATE_CIPHERS

try:                                    # libyaml is in the PyYAML wheels
    _BaseLoader = yaml.CSafeLoader
except AttributeError:                  # pragma: no cover
    _BaseLoader = yaml.SafeLoader

DEFAULT_PATH = "/etc/popd.yaml"
REQUIRED = object()


class ConfigError(Exception):
    """Holds every problem found; str() is one line per problem."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class Problem(Exception):
    """One bad value; the validator that raises it names what is allowed."""


# -- value types ------------------------------------------------------------
# Each checker takes the raw YAML value and returns the converted value or
# raises Problem.  YAML 1.1 turns `no` into False and `0640` into 416, so
# every checker tests the Python type instead of coercing.

def integer(lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise Problem(f"{v!r} is not an integer; allowed: {lo}..{hi}")
        if not lo <= v <= hi:
            raise Problem(f"{v} is out of range; allowed: {lo}..{hi}")
        return v
    check.doc = f"integer {lo}..{hi}"
    return check


def choice(*allowed):
    def check(v):
        if isinstance(v, bool):
            # YAML 1.1 reads unquoted no/yes/off/on as booleans.
            raise Problem(f"{v!r} is not allowed; allowed: {', '.join(allowed)} (YAML "
                          f"reads an unquoted no, yes, off or on as a boolean: quote it)")
        if v not in allowed or not isinstance(v, str):
            raise Problem(f"{v!r} is not allowed; allowed: {', '.join(allowed)}")
        return v
    check.doc = " | ".join(allowed)
    return check


def boolean(v):
    if not isinstance(v, bool):
        raise Problem(f"{v!r} is not a boolean; allowed: true, false")
    return v
boolean.doc = "true | false"


def absolute_path(v):
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise Problem(f"{v!r} is not an absolute path")
    if os.path.normpath(v) != v.rstrip("/") and v != "/":
        raise Problem(f"{v!r} is not a normalised path (no '..', '.' or '//')")
    return v
absolute_path.doc = "absolute path"


def mbox_template(v):
    """`/var/mail/%u`, `~/mbox`, `/srv/mail/%d/%n` (mailpath.py)."""
    try:
        mailpath.check_template(v)
    except ValueError as e:
        raise Problem(str(e)) from None
    return v
mbox_template.doc = "path template: /..., ~/... or %h/..., with %u, %n, %d, %h, %%"


def _principal(lookup, kind):
    """A user or group given by name or number; resolved to a number."""
    def check(v):
        if isinstance(v, bool):
            raise Problem(f"{v!r} is not a {kind} name or number")
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            n = int(v)
            if not 0 <= n < 2**32 - 1:
                raise Problem(f"{v} is not a valid {kind} id")
            return n
        if not isinstance(v, str) or not v:
            raise Problem(f"{v!r} is not a {kind} name or number")
        try:
            return lookup(v)
        except KeyError:
            raise Problem(f"{kind} {v!r} does not exist; create it "
                          f"(scripts/popd-setup) or give a numeric id") from None
    check.doc = f"{kind} name or numeric id"
    return check


user_id = _principal(lambda n: pwd.getpwnam(n).pw_uid, "user")
group_id = _principal(lambda n: grp.getgrnam(n).gr_gid, "group")


def optional(check):
    def optional_check(v):
        return None if v is None else check(v)
    optional_check.doc = f"{check.doc}, or null"
    return optional_check

BACKENDS = ("passwd-file", "system", "pam")


def ordered_choices(v, allowed, what):
    """A list (or one string) of distinct names from `allowed`, kept in order."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise Problem(f"{v!r} is not a non-empty list; allowed: {', '.join(allowed)}")
    for item in v:
        if item not in allowed:
            raise Problem(f"{item!r} is not a {what}; allowed: {', '.join(allowed)}")
    if len(set(v)) != len(v):
        raise Problem(f"{v!r} names a {what} twice")
    return tuple(v)


def backend_list(v):
    """Account sources tried in order, each at most once."""
    return ordered_choices(v, BACKENDS, "backend")
backend_list.doc = "list of passwd-file | system | pam, tried in order"


# mail.uidl_source: where each message's UIDL may come from (mail/foreign_uidl.py).
UIDL_SOURCES = ("x-uidl", "dovecot", "popd")


def uidl_source_list(v):
    """Where UIDLs come from, tried in order per message; popd's own id
    is always the last resort, so nothing may follow it."""
    v = ordered_choices(v, UIDL_SOURCES, "UIDL source")
    if "popd" in v[:-1]:
        raise Problem(f"{list(v)!r}: nothing may follow popd, which gives every message an id")
    return v if v[-1] == "popd" else (*v, "popd")
uidl_source_list.doc = "list of x-uidl | dovecot | popd, tried in order (popd last)"


def path_list(v):
    if not isinstance(v, list):
        raise Problem(f"{v!r} is not a list of absolute paths")
    for item in v:
        absolute_path(item)
    return tuple(v)
path_list.doc = "list of absolute paths"


CERTIFICATE_FIELDS = {"cert", "key", "names"}


def certificate_list(v):
    """Extra certificate/key pairs: [{cert, key, names: [host, *.domain]}];
    without names a pair joins the default one (an RSA pair beside an
    ECDSA one)."""
    if not isinstance(v, list):
        raise Problem("must be a list of {cert, key, names}")
    out = []
    for i, item in enumerate(v):
        where = f"[{i}]"
        if not isinstance(item, dict) or not {"cert", "key"} <= set(item):
            raise Problem(f"{where}: must be a mapping with cert, key and optional names")
        unknown = set(item) - CERTIFICATE_FIELDS
        if unknown:
            raise Problem(f"{where}: unknown field {sorted(unknown)[0]!r}; allowed: "
                          f"cert, key, names")
        for field in ("cert", "key"):
            try:
                absolute_path(item[field])
            except Problem as e:
                raise Problem(f"{where}.{field}: {e}") from None
        names = item.get("names", [])
        if not isinstance(names, list) or not all(_host_name(n) for n in names):
            raise Problem(f"{where}.names: {names!r} is not a list of host names "
                          f"(a leading '*.' matches one label)")
        out.append(types.SimpleNamespace(cert=item["cert"], key=item["key"],
                                         names=tuple(n.lower() for n in names)))
    return tuple(out)
certificate_list.doc = "list of {cert, key, names: [host names]}"


def _host_name(name):
    if not isinstance(name, str) or not name.isascii() or not 0 < len(name) <= 253:
        return False
    labels = name.lower().split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return len(labels) >= 1 and all(
        0 < len(x) <= 63 and all(c.isalnum() or c == "-" for c in x)
        and not x.startswith("-") for x in labels)


def pam_service(v):
    """A file name in /etc/pam.d."""
    if (not isinstance(v, str) or not v or not v.isascii() or "/" in v
            or v.startswith(".") or not all(c.isalnum() or c in "-_." for c in v)):
        raise Problem(f"{v!r} is not a PAM service name (a file in /etc/pam.d)")
    return v
pam_service.doc = "PAM service name"


LISTEN_FIELDS = {"address", "port", "tls", "backlog", "proxy"}
# listen(2) backlog: connections the kernel completes before popd accepts
# them (capped by net.core.somaxconn); SYN floods are the kernel's to absorb
# (syncookies), see popd(8).
DEFAULT_BACKLOG = 128


def listen_list(v):
    if not isinstance(v, list) or not v:
        raise Problem("must be a non-empty list of {address, port, tls}")
    out, seen = [], set()
    for i, item in enumerate(v):
        where = f"[{i}]"
        if not isinstance(item, dict):
            raise Problem(f"{where}: must be a mapping with address, port, tls")
        unknown = set(item) - LISTEN_FIELDS
        if unknown:
            raise Problem(f"{where}: unknown field {sorted(unknown)[0]!r}; "
                          f"allowed: address, port, tls, backlog, proxy")
        try:
            addr = ipaddress.ip_address(item.get("address", ""))
        except ValueError:
            raise Problem(f"{where}.address: {item.get('address')!r} is not "
                          f"an IPv4 or IPv6 address literal") from None
        fields = {}
        for field, check, default in (("port", integer(1, 65535), None),
                                      ("tls", choice("none", "starttls", "implicit"), "none"),
                                      ("backlog", integer(1, 65535), DEFAULT_BACKLOG),
                                      ("proxy", boolean, False)):
            try:
                fields[field] = check(item.get(field, default))
            except Problem as e:
                raise Problem(f"{where}.{field}: {e}") from None
        port, tls, backlog = fields["port"], fields["tls"], fields["backlog"]
        if (str(addr), port) in seen:
            raise Problem(f"{where}: {addr} port {port} is listed twice")
        seen.add((str(addr), port))
        out.append(types.SimpleNamespace(address=str(addr), port=port, tls=tls,
                                         backlog=backlog, family=addr.version,
                                         proxy=fields["proxy"]))
    return out
listen_list.doc = ("list of {address, port, tls: none | starttls | implicit, backlog, "
                   "proxy: true | false}")


def host_port(v):
    """ADDRESS:PORT, IPv6 in brackets: 127.0.0.1:9106, [::1]:9106."""
    text = str(v) if isinstance(v, (str, int)) else ""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
        number = int(port) if port.isascii() and port.isdigit() else -1
    except ValueError:
        addr, number = None, -1
    if not colon or addr is None or not 1 <= number <= 65535 or (
            (addr.version == 6) != text.startswith("[")):
        raise Problem(f"{v!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9106 or [::1]:9106)")
    return types.SimpleNamespace(address=str(addr), port=number, family=addr.version,
                                 backlog=limits.MAX_METRICS_CLIENTS)
host_port.doc = "ADDRESS:PORT (IPv6 in brackets)"


def network_list(v):
    """CIDR networks (a bare address is its own /32 or /128)."""
    if not isinstance(v, list):
        raise Problem("must be a list of networks such as 10.0.0.0/24 or fd00::/64")
    out = []
    for i, item in enumerate(v):
        try:
            out.append(ipaddress.ip_network(str(item), strict=True))
        except ValueError as e:
            raise Problem(f"[{i}]: {item!r} is not a network ({e}); write it as "
                          f"address/prefix with no host bits set") from None
    return tuple(out)
network_list.doc = "list of CIDR networks (IPv4 and IPv6)"


def cipher_list(v):
    """An OpenSSL TLS 1.2 cipher string that selects at least one suite."""
    if not isinstance(v, str) or not v or not v.isascii():
        raise Problem(f"{v!r} is not an OpenSSL cipher list")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
    except ssl.SSLError:
        raise Problem(f"{v!r} selects no cipher; see ciphers(1ssl)") from None
    return v
cipher_list.doc = "OpenSSL cipher list"


def announce(v):
    """Text for CAPA IMPLEMENTATION: printable ASCII, 1..64 characters."""
    if (not isinstance(v, str) or not 1 <= len(v) <= 64 or not v.isascii()
            or not v.isprintable()):
        raise Problem(f"{v!r} is not 1..64 printable ASCII characters")
    return v
announce.doc = "text, 1..64 printable ASCII characters"


# -- the declaration table --------------------------------------------------

@dataclass(frozen=True)
class Key:
    name: str
    check: Callable[[Any], Any]
    default: Any
    help: str
    reloadable: bool = True       # applied by SIGHUP without a restart


KEYS = [
    Key("listen", listen_list, REQUIRED,
        "Sockets to listen on; each address is bound explicitly.", False),
    Key("proxy_trusted_networks", network_list, [],
        "Peers allowed to send a PROXY protocol header (v1 or v2) on a "
        "listener with proxy: true, i.e. the load balancers; any other peer "
        "on such a listener is refused unread.  The header's client address "
        "then drives the per-address caps, the guessing delays, the logs and "
        "the process titles.  See popd(8), \"Behind a load balancer\"."),
    Key("control_group", optional(group_id), None,
        "Group whose members may use popd ctl (the control socket popd.ctl "
        "beside the pid file becomes 0660 root:this group).  Unset: root "
        "only (0600).", False),
    Key("metrics.listen", optional(host_port), None,
        "Serve `popd ctl metrics` over HTTP (GET /metrics, OpenMetrics) on "
        "this ADDRESS:PORT, from a capability-free, chrooted process that "
        "asks the supervisor for the text; no authentication, so a "
        "loopback or management address (e.g. 127.0.0.1:9106).  Unset: off.",
        False),
    Key("user", user_id, "popd",
        "Children run as this user until they become the mailbox owner.", False),
    Key("group", group_id, "popd", "Group of the children before login.", False),
    Key("login_user", user_id, "popd-login",
        "Fronts (the network-facing, capability-free side) run as this user.",
        False),
    Key("login_group", group_id, "popd-login", "Group of the fronts.", False),
    Key("broker_user", user_id, "popd-auth",
        "The auth broker runs as this user; it alone reads the passwd file.",
        False),
    Key("broker_group", group_id, "popd-auth", "Group of the auth broker.",
        False),
    Key("login_chroot", absolute_path, "/run/popd/empty",
        "Empty root-owned directory the fronts chroot into; created (0755) "
        "if missing.", False),
    Key("login_seccomp", choice("required", "optional", "off"), "optional",
        "seccomp filter for fronts (needs the system's libseccomp.so.2: "
        "apt-get install libseccomp2): required (refuse to start without "
        "it), optional (use it when available, else warn at startup), off.",
        False),
    Key("pidfile", absolute_path, "/run/popd/popd.pid",
        "The supervisor's pid file, written in both modes and locked while "
        "it runs; its directory must be root's (created 0755 if missing).",
        False),
    Key("implementation", optional(announce), None,
        "Text announced as CAPA IMPLEMENTATION (e.g. popd); unset: not "
        "announced, so no version string reaches the network."),
    Key("auth.backend", backend_list, ["passwd-file"],
        "Where accounts come from, tried in order (the first that knows "
        "the login decides): passwd-file (auth.passwd_file), system (the "
        "name service and /etc/shadow), pam (auth.pam_service)."),
    Key("auth.passwd_file", absolute_path, "/etc/popd/passwd",
        "Dovecot-format passwd-file: user:{SCHEME}hash:uid:gid::home::"),
    Key("auth.allow_weak_schemes", boolean, False,
        "Accept Dovecot's legacy schemes (PLAIN, MD5-CRYPT, CRYPT, SSHA, "
        "SHA512...) in the passwd file; each login with one logs that the "
        "entry needs re-hashing.  false: such a line is refused (logged)."),
    Key("auth.deny_shells", path_list, [],
        "Accounts whose shell is one of these may not log in (e.g. "
        "/usr/sbin/nologin).  Empty: the shell is not checked."),
    Key("auth.shadow_group", optional(group_id), None,
        "Group that can read /etc/shadow, given to the broker and its "
        "workers alone (system and pam backends).  Unset: the group that "
        "owns /etc/shadow (Debian: shadow)."),
    Key("auth.pam_service", pam_service, "popd",
        "PAM service (/etc/pam.d/<name>) of the pam backend."),
    Key("auth.plaintext", choice("tls-only", "always"), "tls-only",
        "Where USER/PASS and AUTH PLAIN are accepted: tls-only (after STLS "
        "or on implicit TLS) or always (cleartext too)."),
    Key("mail.mbox", mbox_template, "/var/mail/%u",
        "Path of each user's mbox; %u is the login name."),
    Key("mail.first_valid_uid", integer(1, 2**32 - 2), 1000,
        "Never serve a mailbox as a uid below this (and never uid 0)."),
    Key("mail.first_valid_gid", integer(1, 2**32 - 2), 1000,
        "Never switch to a gid below this (and never gid 0)."),
    Key("mail.dotlock_group", optional(group_id), None,
        "Group allowed to create <mbox>.lock in the spool (Debian: mail); "
        "only a tiny per-session lock helper holds it.  Unset: dot-locks "
        "only where the owner may create them, fcntl locks always."),
    Key("mail.uidl_source", uidl_source_list, ["popd"],
        "UIDLs another server left in the mbox, kept when moving to popd so "
        "that clients do not download everything again: x-uidl (qpopper, "
        "GNU Mailutils), dovecot (X-UID + X-IMAPbase as %08Xu%08Xv), tried "
        "in order per message, then popd's own.  Read once, at the first "
        "open of each maildrop, and remembered; see popd(8), MIGRATING."),
    Key("mail.expire_days", optional(integer(0, 36500)), None,
        "RFC 2449 EXPIRE: a message retrieved in a session that quit at "
        "least this many days ago is removed at the next QUIT (0: at the "
        "QUIT of the session that retrieved it); announced as EXPIRE N.  "
        "Unset: nothing expires, announced as EXPIRE NEVER."),
    Key("mail.state_dir", absolute_path, "/var/lib/popd",
        "Root-owned 0711 directory; popd keeps per-uid 0700 subdirectories "
        "there.", False),
    Key("limits.max_children", integer(1, 4096), 64,
        "Hard cap on pool slots, i.e. connections served at once."),
    Key("limits.spare_children", integer(0, 256), 4,
        "Idle pre-forked slots kept ready."),
    Key("limits.max_per_ip", integer(1, 4096), 8,
        "Concurrent connections from one IPv4 address or IPv6 /64."),
    Key("limits.max_sessions_per_uid", optional(integer(1, 4096)), None,
        "Logged-in sessions one uid may hold at once, across all its "
        "maildrops (virtual users sharing a uid); [IN-USE] beyond.  Unset: "
        "no cap beyond one session per maildrop, which is always kept."),
    Key("limits.login_delay", optional(integer(1, 86400)), None,
        "RFC 2449 LOGIN-DELAY: seconds a user must wait after a session "
        "ends before the next login, enforced by the broker and announced "
        "in CAPA; the right password is then refused with [LOGIN-DELAY].  "
        "Unset: no delay, and none announced."),
    Key("limits.login_deadline", integer(5, 600), 30,
        "Seconds from the greeting to a completed login."),
    Key("limits.idle_timeout", integer(10, 86400), 600,
        "Seconds a logged-in client may stay silent (RFC 1939 asks for at "
        "least 600)."),
    Key("limits.max_bad_commands", integer(1, 1000), 10,
        "Bad commands (unknown, malformed, out of state, overlong) a "
        "connection may send before it is closed."),
    Key("limits.max_auth_failures", integer(1, 20), 3,
        "Failed logins one connection may make; the last one ends it."),
    Key("limits.auth_delay_min", integer(0, 60), 2,
        "Seconds the broker waits before answering once an address or a "
        "user has failed within auth_failure_window; doubles with each "
        "further failure.  0 turns the delays off."),
    Key("limits.auth_delay_max", integer(0, 600), 20,
        "Cap on that delay, in seconds.  With delays on it must leave at "
        "least 10 s of login_deadline for the handshake and the client."),
    Key("limits.auth_delay_max_success", integer(0, 600), 5,
        "Cap, in seconds, on the delay before a right password is answered, "
        "however many failures its user or address has: guessers cannot "
        "push a real user past the login deadline.  See popd(8), "
        "\"Password guessing\", for what it costs."),
    Key("limits.auth_throttle_memory", integer(1, 1024), 16,
        "MiB the broker's failure counters may use (about 2,000 keys per "
        "MiB in each of three tables); the least recently used are "
        "forgotten first."),
    Key("limits.broker_memory", integer(128, 65536), 512,
        "Address-space cap (MiB) of the auth broker and of each hashing "
        "worker (argon2 needs its memory cost on top of ~100 MiB)."),
    Key("limits.auth_failure_window", integer(10, 86400), 900,
        "Seconds a failed login counts against its address and its user."),
    Key("limits.auth_workers", integer(1, 32), 2,
        "Broker processes that hash passwords in parallel."),
    Key("limits.auth_queue", integer(8, 4096), 64,
        "Logins waiting for a hashing worker (at most max_per_ip from one "
        "address); beyond that [SYS/TEMP]."),
    Key("limits.session_memory", integer(128, 65536), 1024,
        "Address-space cap (MiB) of a logged-in session's process; the "
        "interpreter alone maps about 100 MiB."),
    Key("limits.shutdown_grace", integer(0, 3600), 10,
        "Seconds TERM waits for sessions to end before killing them."),
    Key("tls.cert", absolute_path, "/etc/popd/tls/cert.pem",
        "PEM certificate chain, server certificate first; read at start "
        "when a listener uses TLS.", False),
    Key("tls.key", absolute_path, "/etc/popd/tls/key.pem",
        "PEM private key, unencrypted, not readable by others (0600 or "
        "0640); read only by the root supervisor.", False),
    Key("tls.certificates", certificate_list, [],
        "More certificate/key pairs, chosen by the name the client asks "
        "for (SNI); a pair without names joins the default tls.cert/tls.key "
        "(e.g. RSA beside ECDSA).  Same checks as tls.cert/tls.key; the "
        "files are read again at SIGHUP.", False),
    Key("tls.min_version", choice("TLSv1.2", "TLSv1.3"), "TLSv1.2",
        "Oldest TLS version accepted.", False),
    Key("tls.ciphers", cipher_list, MOZILLA_INTERMEDIATE_CIPHERS,
        "OpenSSL cipher list for TLS 1.2 (TLS 1.3 uses OpenSSL's suites); "
        "default: Mozilla intermediate.", False),
    Key("logging.target", choice("stderr", "syslog"), "stderr",
        "Where log lines go (syslog uses facility mail, ident popd)."),
    Key("logging.level", choice("debug", "info", "warning", "error"), "info",
        "Least severe level logged."),
    Key("logging.syslog_address", absolute_path, "/dev/log",
        "Unix socket of the syslog daemon."),
    Key("logging.timestamps", optional(boolean), None,
        "With logging.target: stderr, start each line with the local time "
        "(ISO 8601, milliseconds, UTC offset), for a plain log file such as "
        "the init script's.  Unset: on, unless stderr is systemd's journal "
        "(JOURNAL_STREAM), which stamps lines itself."),
    Key("logging.verbose_proctitle", boolean, False,
        "Show user and client address in process titles (every local user "
        "can read them)."),
]
KEY_INDEX = {k.name: k for k in KEYS}
SECTIONS = {k.name.split(".")[0] for k in KEYS if "." in k.name}


# -- loading ----------------------------------------------------------------

class _StrictLoader(_BaseLoader):
    """Safe loader that refuses duplicate mapping keys."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.MarkedYAMLError(
                "duplicate key", key_node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path):
    try:
        with open(path, "rb") as f:
            text = f.read(limits.CONFIG_FILE_MAX + 1)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    if len(text) > limits.CONFIG_FILE_MAX:
        # Parsing only the first MiB would let keys past it fall back to
        # their defaults without a word.
        raise ConfigError([f"{path}: longer than {limits.CONFIG_FILE_MAX >> 20} MiB; "
                           f"is this the configuration file?"])
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"{path}: {where}: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys"])
    return data


def _flatten(data, problems, path):
    """{'limits': {'max_children': 3}} -> {'limits.max_children': 3}."""
    flat = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{path}: {key}: must be a mapping of keys")
                continue
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        elif "." in str(key) and str(key).split(".")[0] in SECTIONS:
            # "limits.max_children: 3" at the top level would bypass the
            # duplicate-key check against a "limits:" section.
            section, sub = str(key).split(".", 1)
            problems.append(f"{path}: {key}: write it inside its section "
                            f"({section}: {{{sub}: ...}}); see popd.yaml(5)")
        else:
            flat[str(key)] = value
    return flat


def load(path):
    """Load and validate; returns an immutable namespace or raises ConfigError."""
    problems = []
    flat = _flatten(_read_yaml(path), problems, path)
    values = {}
    for name, raw in flat.items():
        key = KEY_INDEX.get(name)
        if key is None:
            problems.append(f"{path}: {name}: unknown key; see popd.yaml(5)")
            continue
        try:
            values[name] = key.check(raw)
        except Problem as e:
            problems.append(f"{path}: {name}: {e}")
    for key in KEYS:
        if key.name in values or key.name in flat:
            continue
        if key.default is REQUIRED:
            problems.append(f"{path}: {key.name}: missing; it is required")
            continue
        try:
            values[key.name] = key.check(key.default)
        except Problem as e:
            problems.append(f"{path}: {key.name}: default {key.default!r}: {e}"
                            f" (set {key.name} explicitly)")
    if not problems:
        problems += [f"{path}: {p}" for p in _resolve_shadow_group(values)]
    if not problems:
        problems += [f"{path}: {p}" for p in _cross_checks(values, set(flat))]
    if problems:
        raise ConfigError(problems)
    return _namespace(values, path)


SHADOW = "/etc/shadow"


def _resolve_shadow_group(v):
    """The system and pam backends read /etc/shadow through a group the
    broker alone gets: unset means the file's own group."""
    if not {"system", "pam"} & set(v["auth.backend"]):
        v["auth.shadow_group"] = None
        return []
    if v["auth.shadow_group"] is None:
        try:
            v["auth.shadow_group"] = os.stat(SHADOW).st_gid
        except OSError as e:
            return [f"auth.shadow_group: unset, and {SHADOW}: {e.strerror}; "
                    f"name the group that can read the shadow file"]
    if v["auth.shadow_group"] == 0:
        return [f"auth.shadow_group: {SHADOW} belongs to group 0; the system and "
                f"pam backends need a group that reads it (Debian: shadow, mode "
                f"0640); run: chgrp shadow {SHADOW} && chmod 0640 {SHADOW}, or set "
                f"auth.shadow_group"]
    for name in ("group", "login_group", "mail.dotlock_group"):
        if v[name] == v["auth.shadow_group"]:
            return [f"auth.shadow_group: {v['auth.shadow_group']} is also {name}; "
                    f"only the broker may read password hashes"]
    return []


def _cross_checks(v, given=()):
    """Rules that involve more than one key; `given` are the keys the file
    sets (a default that no longer fits is named as one)."""
    out = []
    cap = v["limits.max_children"]
    for name in ("limits.spare_children", "limits.max_per_ip"):
        if v[name] > cap:
            default = "" if name in given else " (the default)"
            out.append(f"{name}: {v[name]}{default} is more than limits.max_children "
                       f"({cap}); set {name} to at most {cap}")
    # The front's login deadline includes the broker's delay: a delay that
    # fills it turns every delayed answer into "Login timed out".
    deadline, delay_max = v["limits.login_deadline"], v["limits.auth_delay_max"]
    spare = deadline - delay_max
    if v["limits.auth_delay_min"] > 0 and spare < limits.LOGIN_HEADROOM:
        room = deadline - limits.LOGIN_HEADROOM
        fixes = (f"lower auth_delay_max to at most {room} or " if room >= 0 else "")
        fixes += f"raise login_deadline to at least {delay_max + limits.LOGIN_HEADROOM}"
        if room < 0:
            fixes += ", or set limits.auth_delay_min to 0 (no delays)"
        out.append(f"limits.auth_delay_max: {delay_max} leaves {spare} s of "
                   f"limits.login_deadline ({deadline}), less than "
                   f"{limits.LOGIN_HEADROOM} s for the handshake and the client; {fixes}")
    metrics = v["metrics.listen"]
    if metrics is not None and any((l.address, l.port) == (metrics.address, metrics.port)
                                   for l in v["listen"]):
        out.append(f"metrics.listen: {metrics.address} port {metrics.port} is also a "
                   f"POP3 listener; give the metrics another port")
    proxied = [f"{l.address} port {l.port}" for l in v["listen"] if l.proxy]
    if proxied and not v["proxy_trusted_networks"]:
        out.append(f"listen: {proxied[0]} has proxy: true but proxy_trusted_networks "
                   f"is empty; list the load balancers' addresses there")
    # Three distinct identities: if the front shared a uid with the child or
    # the broker it could ptrace or signal them.
    for kind, names in (("user", ("user", "login_user", "broker_user")),
                        ("group", ("group", "login_group", "broker_group"))):
        for name in names:
            if v[name] == 0:
                out.append(f"{name}: resolves to {kind} id 0 (root); popd "
                           f"needs an unprivileged {kind}")
        ids = [v[n] for n in names]
        if len(set(ids)) != len(ids):
            out.append(f"{', '.join(names)}: must be three different "
                       f"{kind}s (got ids {ids})")
    return out


def _namespace(values, path):
    root = {"path": path}
    for name, value in values.items():
        section, _, leaf = name.rpartition(".")
        target = root.setdefault(section, {}) if section else root
        target[leaf] = value
    sections = {k: types.SimpleNamespace(**v) for k, v in root.items()
                if isinstance(v, dict)}
    plain = {k: v for k, v in root.items() if not isinstance(v, dict)}
    return types.SimpleNamespace(**plain, **sections)


def value(cfg, name):
    """The value of a dotted key in a loaded configuration."""
    node = cfg
    for part in name.split("."):
        node = getattr(node, part)
    return node


def set_value(cfg, name, new):
    section, _, leaf = name.rpartition(".")
    setattr(value(cfg, section) if section else cfg, leaf, new)


def service_ids(cfg):
    """The uids and gids of popd's own service users: never a grant target."""
    return ({cfg.user, cfg.login_user, cfg.broker_user},
            {cfg.group, cfg.login_group, cfg.broker_group})
