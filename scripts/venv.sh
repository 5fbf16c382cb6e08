# Sourced by demo.sh and test.sh: make sure /opt/popd is a venv made from
# /usr/bin/python3 (3.11+).  popd's unprivileged processes must be able to
# read the interpreter, so never a Python under /root or /home (pyenv),
# whatever `python3` is first on PATH; popd-setup --install-venv checks
# the same and uses the same venv.
VENV=${POPD_VENV:-/opt/popd}
PYTHON=/usr/bin/python3
if [ ! -x "$PYTHON" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
if [ -f "$VENV/pyvenv.cfg" ]; then
    made_from=$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg")
    case "$made_from" in
        /root/*|/home/*)
            echo "$0: $VENV was made from a Python in $made_from, which popd's users" \
                 "cannot read; remove it (rm -r $VENV) and run $0 again" >&2
            exit 1 ;;
    esac
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian ships venv separately.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    "$PYTHON" -m venv "$VENV"
    chmod 0755 "$VENV"
fi
