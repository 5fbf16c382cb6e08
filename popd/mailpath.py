"""Mailbox path templates (`mail.mbox`, Dovecot's userdb_mail INBOX=):
the sequences, and the checks every expansion passes.

Runs in: the launcher (config validation) and the auth broker (each
grant).  A login or a home comes from a client or an account database;
neither may steer the path out of where the template points: every
substituted part is checked, and the result must be absolute, normalised
and under the template's fixed directory (or under the home).  The child
later opens the file only if the granted uid owns it (maildrop.py).

  %u  the login name           %n  its local part (before the last '@')
  %d  its domain (after '@')   %h  the home directory (only at the start)
  ~   the home (only as a leading '~/')      %%  a percent sign
"""
import os

SEQUENCES = ("%u", "%n", "%d", "%h", "%%")


def check_template(template, shared=True):
    """Raise ValueError naming the problem, or return None.  shared=False
    for one account's own path (userdb_mail), which may be fixed."""
    if not isinstance(template, str) or "\0" in template or not template:
        raise ValueError(f"{template!r} is not a path")
    rest = template.replace("%%", "")
    for i, c in enumerate(rest):
        if c == "%" and rest[i:i + 2] not in SEQUENCES:
            raise ValueError(f"{template!r} has an unknown % sequence; allowed: "
                             f"{', '.join(SEQUENCES)}")
    homed = template.startswith(("~/", "%h/"))
    if "%h" in template[1:] or "~" in template[1:]:
        raise ValueError(f"{template!r}: %h and ~ may only start the path, "
                         f"e.g. ~/mbox or %h/mail/inbox")
    if not homed and not template.startswith("/"):
        raise ValueError(f"{template!r} is not absolute (start with /, ~/ or %h/)")
    if shared and not homed and not any(s in rest for s in ("%u", "%n")):
        raise ValueError(f"{template!r} does not name a per-user file "
                         f"(use %u, %n, %h or ~)")
    if shared and not homed and "/" not in template[:template.index("%")].lstrip("/"):
        # The part before the first % must name a directory other than /,
        # so that every built path stays under it.
        raise ValueError(f"{template!r} must start with a directory, e.g. "
                         f"/var/mail/%u")
    plain = template.replace("%%", "%").replace("~/", "/", 1)
    for s in ("%u", "%n", "%d", "%h"):
        plain = plain.replace(s, "x")
    if os.path.normpath(plain) != plain:
        raise ValueError(f"{template!r} is not a normalised path (no '..', "
                         f"'.' or '//')")


def _part(value, what):
    if not value or "/" in value or "\0" in value or value.startswith("."):
        raise ValueError(f"{what} {value!r} cannot be part of a path")
    return value


def expand(template, login, home=""):
    """The mailbox path of `login` (with `home` for %h and ~), or
    ValueError saying why there is none."""
    local, at, domain = login.rpartition("@")
    if not at:
        local, domain = login, ""
    values = {"%u": lambda: _part(login, "login"),
              "%n": lambda: _part(local, "local part"),
              "%d": lambda: _part(domain, "domain of the login"),
              "%%": lambda: "%"}
    homed = template.startswith(("~/", "%h/"))
    if homed:
        if (not home.startswith("/") or home == "/" or "\0" in home
                or os.path.normpath(home) != home):
            raise ValueError(f"home {home!r} is not an absolute, normalised "
                             f"directory other than /")
        template = template[2:] if template.startswith("~/") else template[3:]
    out, i = [], 0
    while i < len(template):
        seq = template[i:i + 2]
        if seq in values:
            out.append(values[seq]())
            i += 2
        else:
            out.append(template[i])
            i += 1
    path = "".join(out)
    if homed:
        base, path = home, home + "/" + path
    else:
        base = template[:template.index("%")].rsplit("/", 1)[0] if "%" in template else ""
    if os.path.normpath(path) != path or not path.startswith(base + "/"):
        raise ValueError(f"{path!r} leaves {base or '/'}")
    return path


def well_formed(path):
    """What the child checks of a granted path: absolute, normalised, no NUL."""
    return (isinstance(path, str) and path.startswith("/") and "\0" not in path
            and os.path.normpath(path) == path and path != "/")
