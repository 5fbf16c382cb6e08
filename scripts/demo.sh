#!/bin/sh
# Quick start: install popd into /opt/popd (a venv readable by popd's
# unprivileged users) and run a throwaway demo server on 127.0.0.1 (STLS on
# 1110 and TLS on 1995, or free ports if those are taken).  Options:
# scripts/popd-demo.py --help (--port, --tls-port, --dir).
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (popd binds ports and drops privileges): sudo $0" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
. scripts/venv.sh
# An editable install of this very tree (scripts/test.sh makes one) is
# already current; anything else is (re)installed from here.
if ! "$VENV/bin/python" -I - "$(pwd)" 2>/dev/null <<'PY'
import importlib.metadata, json, sys
info = json.loads(importlib.metadata.distribution("popd").read_text("direct_url.json") or "{}")
current = info.get("dir_info", {}).get("editable") and info.get("url") == "file://" + sys.argv[1]
sys.exit(0 if current else 1)
PY
then
    "$VENV/bin/pip" install -q .
fi
exec "$VENV/bin/python" scripts/popd-demo.py "$@"
