"""popd.yaml validation: one line per problem naming key, value, what is allowed."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from popd import config, mailpath

REPO = Path(__file__).resolve().parents[2]
GOOD = textwrap.dedent("""\
    listen:
      - {address: 127.0.0.1, port: 1110, tls: none}
    user: 60010
    group: 60010
    login_user: 60011
    login_group: 60011
    broker_user: 60012
    broker_group: 60012
    """)


def write(tmp_path, text):
    path = tmp_path / "popd.yaml"
    path.write_text(text)
    return path


def problems(tmp_path, text):
    with pytest.raises(config.ConfigError) as err:
        config.load(write(tmp_path, text))
    return err.value.problems


def test_good_config_and_defaults(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.limits.max_children == 64 and cfg.mail.first_valid_uid == 1000
    assert cfg.listen[0].port == 1110 and cfg.user == 60010


def test_duplicate_key_is_an_error(tmp_path):
    (p,) = problems(tmp_path, GOOD + "user: 0\n")
    assert "duplicate key 'user'" in p and "line 9" in p


def test_a_dotted_key_outside_its_section_is_refused(tmp_path):
    # Else it would bypass the duplicate check against the section.
    (p,) = problems(tmp_path, GOOD + "auth: {backend: [passwd-file]}\n"
                                     "auth.backend: [system]\n")
    assert "auth.backend: write it inside its section (auth: {backend: ...})" in p, p


def test_a_file_longer_than_the_bound_is_refused_not_read_in_part(tmp_path):
    # The key past the first MiB must not silently fall back to its default.
    (p,) = problems(tmp_path, GOOD + "#" * (1 << 20) + "\nlimits: {max_children: 3}\n")
    assert "longer than 1 MiB" in p, p


@pytest.mark.parametrize("extra,expected", [
    ("limits: {max_children: 0}", "limits.max_children: 0 is out of range; allowed: 1..4096"),
    ("limits: {max_children: yes}", "limits.max_children: True is not an integer"),
    ("limits: {frobnicate: 1}", "limits.frobnicate: unknown key"),
    ("logging: {target: file}", "logging.target: 'file' is not allowed; allowed: stderr, syslog"),
    ("logging: {verbose_proctitle: 'no'}", "logging.verbose_proctitle: 'no' is not a boolean"),
    ("mail: {mbox: /var/mail/user}", "mail.mbox: '/var/mail/user' does not name a per-user"),
    ("mail: {mbox: var/%u}", "mail.mbox: 'var/%u' is not absolute (start with /, ~/ or %h/)"),
    ("mail: {mbox: /var/mail/%x}", "mail.mbox: '/var/mail/%x' has an unknown % sequence"),
    ("mail: {mbox: /var/mail/%h}", "%h and ~ may only start the path"),
    ("auth: {backend: [passwd-file, ldap]}", "auth.backend: 'ldap' is not a backend"),
    ("auth: {backend: [system, system]}", "names a backend twice"),
    ("auth: {deny_shells: [nologin]}", "auth.deny_shells: 'nologin' is not an absolute path"),
    ("auth: {pam_service: ../etc/shadow}", "is not a PAM service name"),
    ("auth: {passwd_file: /etc/../etc/passwd}", "is not a normalised path"),
    ("limits: {spare_children: 100, max_children: 10}", "limits.spare_children: 100 is more than"),
    ("limits: {max_children: 6}", "limits.max_per_ip: 8 (the default) is more than "
     "limits.max_children (6); set limits.max_per_ip to at most 6"),
    ("auth: {plaintext: no}", "auth.plaintext: False is not allowed; allowed: tls-only, always "
     "(YAML reads an unquoted no, yes, off or on as a boolean: quote it)"),
])
def test_bad_values_name_key_value_and_range(tmp_path, extra, expected):
    found = problems(tmp_path, GOOD + extra + "\n")
    assert any(expected in p for p in found), found


def test_tls_listeners_and_keys(tmp_path):
    cfg = config.load(write(tmp_path, GOOD.replace("tls: none", "tls: implicit")))
    assert cfg.listen[0].tls == "implicit" and cfg.auth.plaintext == "tls-only"
    assert cfg.tls.min_version == "TLSv1.2" and "CHACHA20" in cfg.tls.ciphers
    assert cfg.implementation is None
    listeners = GOOD.split("user:")[0]
    for replace, extra, expected in [
        (listeners, "listen: [{address: 127.0.0.1, port: 1, tls: yes}]\n",
         "[0].tls: True is not allowed; allowed: none, starttls, implicit"),
        (listeners, "listen: [{address: 127.0.0.1, port: 70000}]\n",
         "listen: [0].port: 70000 is out of range; allowed: 1..65535"),
        ("", "tls: {min_version: TLSv1.1}\n", "tls.min_version: 'TLSv1.1' is not allowed"),
        ("", "tls: {ciphers: NOSUCHCIPHER}\n", "tls.ciphers: 'NOSUCHCIPHER' selects no cipher"),
        ("", "auth: {plaintext: never}\n", "auth.plaintext: 'never' is not allowed"),
        ("", 'implementation: "a\\nb"\n', "implementation: 'a\\nb' is not 1..64 printable"),
    ]:
        text = GOOD.replace(replace, extra) if replace else GOOD + extra
        found = problems(tmp_path, text)
        assert any(expected in p for p in found), found


def test_root_and_shared_identities_are_refused(tmp_path):
    found = problems(tmp_path, GOOD.replace("login_user: 60011", "login_user: 0"))
    assert any("login_user: resolves to user id 0" in p for p in found)
    found = problems(tmp_path, GOOD.replace("broker_user: 60012", "broker_user: 60010"))
    assert any("must be three different users" in p for p in found)


def test_mbox_path_stays_under_the_template_directory():
    assert mailpath.expand("/var/mail/%u", "alice") == "/var/mail/alice"
    assert mailpath.expand("/home/%u/mbox", "bob") == "/home/bob/mbox"
    assert mailpath.expand("~/mail/inbox", "bob", "/home/bob") == "/home/bob/mail/inbox"
    assert mailpath.expand("%h/mbox", "bob", "/srv/b") == "/srv/b/mbox"
    assert mailpath.expand("/srv/mail/%d/%n", "bob@example.org") == "/srv/mail/example.org/bob"
    assert mailpath.expand("/var/mail/%n", "bob@example.org") == "/var/mail/bob"
    assert mailpath.expand("/var/mail/%u%%", "bob") == "/var/mail/bob%"
    for bad in ("../etc", ".hidden", "a/b", "", "x\0y", ".."):
        with pytest.raises(ValueError):
            mailpath.expand("/var/mail/%u", bad)
    for template, login, home in (("/srv/%d/%n", "bob", ""), ("/srv/%d/%n", "bob@.x", ""),
                                  ("/srv/%d/%n", "..@x", ""), ("~/mbox", "bob", ""),
                                  ("~/mbox", "bob", "/"), ("~/mbox", "bob", "/home/../etc"),
                                  ("%h/mbox", "bob", "home/bob"), ("~/mbox", "bob", "/a\0b")):
        with pytest.raises(ValueError):
            mailpath.expand(template, login, home)


def test_check_config_command(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    os.chmod(passwd, 0o640)
    good = write(tmp_path, GOOD + textwrap.dedent(f"""\
        pidfile: {tmp_path}/popd.pid
        login_chroot: {tmp_path}/empty
        auth: {{passwd_file: {passwd}}}
        mail: {{state_dir: {tmp_path}/state}}
        """))
    run = subprocess.run([sys.executable, "-m", "popd", "-c", str(good), "--check-config"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    if os.geteuid() == 0:
        assert run.stdout == f"popd: {good}: configuration is valid\n"
        passwd.unlink()
        run = subprocess.run([sys.executable, "-m", "popd", "-c", str(good),
                              "--check-config"], capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 1
        assert run.stderr == f"popd: {passwd} (the passwd file): No such file or directory\n"
    else:
        assert run.stdout.endswith("files not checked (run as root to check them)\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "limits: {max_per_ip: -1, idle_timeout: 'ten'}\n")
    run = subprocess.run([sys.executable, "-m", "popd", "-c", str(bad), "--check-config"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"popd: {bad}: limits.") for line in lines)
    assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "popd", "--version"], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.startswith("popd ")


def test_every_key_is_documented_in_the_man_page_and_example():
    man = (REPO / "man" / "popd.yaml.5").read_text()
    example = (REPO / "etc" / "popd.yaml").read_text()
    for key in config.KEYS:
        leaf = key.name.split(".")[-1]
        assert f"Cm {key.name}" in man or f"Cm {leaf}" in man, key.name
        assert f"{leaf}:" in example, key.name


def test_listen_backlog(tmp_path):
    cfg = config.load(write(tmp_path, GOOD.replace("tls: none}", "tls: none, backlog: 512}")))
    assert cfg.listen[0].backlog == 512
    assert config.load(write(tmp_path, GOOD)).listen[0].backlog == 128
    found = problems(tmp_path, GOOD.replace("tls: none}", "tls: none, backlog: 0}"))
    assert any("listen: [0].backlog: 0 is out of range; allowed: 1..65535" in p for p in found), found


def test_proxy_listeners_need_trusted_networks(tmp_path):
    proxied = GOOD.replace("tls: none}", "tls: none, proxy: true}")
    assert config.load(write(tmp_path, GOOD)).listen[0].proxy is False
    (line,) = problems(tmp_path, proxied)
    assert "has proxy: true but proxy_trusted_networks is empty" in line, line
    cfg = config.load(write(tmp_path, proxied + "proxy_trusted_networks: [10.0.0.5/32, "
                                                "'fd00::/64', 192.0.2.1]\n"))
    assert cfg.listen[0].proxy is True
    assert [str(n) for n in cfg.proxy_trusted_networks] == ["10.0.0.5/32", "fd00::/64",
                                                            "192.0.2.1/32"]
    (line,) = problems(tmp_path, proxied + "proxy_trusted_networks: [10.0.0.5/16]\n")
    assert "proxy_trusted_networks: [0]: '10.0.0.5/16' is not a network" in line, line
    assert "no host bits set" in line
    (line,) = problems(tmp_path, GOOD.replace("tls: none}", "tls: none, proxy: yes please}"))
    assert "listen: [0].proxy" in line, line


def test_auth_delay_max_must_leave_room_in_the_login_deadline(tmp_path):
    bad = write(tmp_path, GOOD + "limits: {auth_delay_max: 30, login_deadline: 30}\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(bad))
    (line,) = e.value.problems
    assert "limits.auth_delay_max: 30" in line and "limits.login_deadline (30)" in line
    assert "at most 20" in line and "raise login_deadline to at least 40" in line
    # A deadline under the headroom itself: no auth_delay_max fits, so the
    # line does not suggest one.
    (line,) = problems(tmp_path, GOOD + "limits: {login_deadline: 8}\n")
    assert "lower auth_delay_max" not in line, line
    assert "raise login_deadline to at least 30" in line
    assert "set limits.auth_delay_min to 0" in line
    # Delays off: nothing to leave room for.
    config.load(str(write(tmp_path, GOOD + "limits: {auth_delay_min: 0, auth_delay_max: 30,"
                                          " login_deadline: 30}\n")))
    assert config.load(str(write(tmp_path, GOOD))).limits.auth_delay_max == 20
