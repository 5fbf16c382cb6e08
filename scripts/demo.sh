#!/bin/sh
# Quick start: install popd into /opt/popd (a venv readable by popd's
# unprivileged users) and run a throwaway demo server on 127.0.0.1:1110.
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (popd binds ports and drops privileges): sudo $0" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
. scripts/venv.sh
"$VENV/bin/pip" install -q .
exec "$VENV/bin/python" scripts/popd-demo.py "$@"
