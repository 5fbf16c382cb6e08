#!/bin/sh
# Run popd's test suite (as root: the system tests start the real daemon,
# which binds ports and switches users).
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root: sudo $0" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
# Everything the tests use, so that none is skipped for a missing tool.
sh scripts/test-deps.sh
. scripts/venv.sh
"$VENV/bin/pip" install -q -e '.[test]'
exec "$VENV/bin/python" -m pytest tests "$@"
