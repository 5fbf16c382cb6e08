"""popd: a privilege-separated POP3 server for Unix."""
import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "popd" / "__init__.py").read_text()).group(1)

setup(
    name="popd",
    version=VERSION,
    description="A secure, privilege-separated POP3 server for Unix mbox spools",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    python_requires=">=3.11",
    packages=["popd", "popd.broker", "popd.exporter", "popd.mail", "popd.pop3",
              "popd.slot", "popd.supervisor", "popd.unix"],
    install_requires=[
        # libpass is the maintained passlib fork and installs the `passlib`
        # import name; never depend on passlib as well (they overwrite each
        # other's files).
        "libpass[bcrypt,argon2]>=1.9.4,<1.10",
        "bcrypt>=4.1,<6",
        "argon2-cffi>=23.1,<26",
        "python-daemon>=3.1.2,<4",
        # popd/unix/proctitle.py loads its C module directly (it says why):
        # only releases whose layout was checked.
        "setproctitle>=1.3.3,<1.4",
        "PyYAML>=6.0.1,<7",
        # The pam backend (popd/broker/pam_auth.py says why this binding).
        "pamela==1.2.0",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3",
                 "hypothesis>=6.100", "trustme>=1.2,<2",
                 # its OpenMetrics parser reads `popd ctl metrics` in the tests
                 "prometheus_client>=0.17",
                 # 3.0.0 is the last atheris with cp311 wheels (3.1.0 has
                 # cp312+ only); tests/unit/test_fuzz_short.py skips without it.
                 'atheris==3.0.0; python_version < "3.12"'],
    },
    entry_points={
        "console_scripts": [
            "popd=popd.cli:main",
            "popd-passwd=popd.passwd_cli:main",
        ],
    },
    data_files=[
        ("share/man/man8", ["man/popd.8", "man/popd-passwd.8"]),
        ("share/man/man5", ["man/popd.yaml.5"]),
        ("share/doc/popd/examples", ["etc/popd.yaml", "scripts/popd.service",
                                     "scripts/popd.init", "scripts/popd-setup"]),
        ("share/doc/popd/examples/fail2ban/filter.d", ["etc/fail2ban/filter.d/popd.conf"]),
        ("share/doc/popd/examples/fail2ban/jail.d", ["etc/fail2ban/jail.d/popd.conf"]),
        ("share/doc/popd/examples/pam.d", ["etc/pam.d/popd"]),
        ("share/doc/popd/examples/haproxy", ["etc/haproxy/popd.cfg"]),
    ],
)
