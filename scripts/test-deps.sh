#!/bin/sh
# The Debian packages the test suite uses, installed if missing: called by
# scripts/test.sh (the README's test command) and by .ci/run, so both run
# the whole suite rather than skipping what a fresh machine lacks.
#   curl, openssl, fetchmail, getmail6, mutt: real clients; procmail: a real MDA;
#   mandoc: man page lint; fail2ban: fail2ban-regex over popd's log lines;
#   systemd: systemd-analyze for the unit file; iproute2, util-linux:
#   namespaces; libseccomp2: the fronts' filter; passwd: useradd and
#   chpasswd for the system-account tests; python3-venv: /opt/popd;
#   dovecot-pop3d (with dovecot-lda), mailutils-pop3d: the servers whose
#   UIDLs the migration tests take over; haproxy: the load balancer in
#   front of two popd nodes (PROXY protocol).  No service is started by the
#   install (a policy-rc.d refuses it while apt runs).
set -eu
PACKAGES="curl openssl fetchmail getmail6 mutt procmail mandoc python3-venv fail2ban systemd
iproute2 util-linux libseccomp2 passwd dovecot-core dovecot-pop3d mailutils-pop3d haproxy"
missing=
for p in $PACKAGES; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "test-deps.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# popd scripts/test-deps.sh: no service starts\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
