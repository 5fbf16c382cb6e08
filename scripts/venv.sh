# Sourced by demo.sh and test.sh: make sure /opt/popd is a Python 3.11+ venv.
VENV=${POPD_VENV:-/opt/popd}
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian ships venv separately.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    python3 -m venv "$VENV"
    chmod 0755 "$VENV"
fi
