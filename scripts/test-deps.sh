#!/bin/sh
# The Debian packages the test suite uses, installed if missing: called by
# scripts/test.sh (the README's test command) and by .ci/run, so both run
# the whole suite rather than skipping what a fresh machine lacks.
#   curl, openssl, fetchmail, getmail6, mutt: real clients; procmail: a real MDA;
#   mandoc: man page lint; fail2ban: fail2ban-regex over popd's log lines;
#   systemd: systemd-analyze for the unit file; iproute2, util-linux:
#   namespaces; libseccomp2: the fronts' filter; passwd: useradd and
#   chpasswd for the system-account tests; python3-venv: /opt/popd.
set -eu
PACKAGES="curl openssl fetchmail getmail6 mutt procmail mandoc python3-venv fail2ban systemd
iproute2 util-linux libseccomp2 passwd"
missing=
for p in $PACKAGES; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "test-deps.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
