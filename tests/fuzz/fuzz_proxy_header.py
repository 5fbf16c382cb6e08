"""atheris fuzz target for the PROXY protocol header parser, the one
parser that runs as root (popd/supervisor/proxy_header.py).

Checks on every input, cut into the pieces a slow balancer could send:
  - parse() returns None (incomplete), a ProxyHeader, or raises
    ProxyHeaderError, and nothing else;
  - a header never claims more bytes than it was given, nor more than
    limits.PROXY_HEADER_MAX, and its client address is a valid address in
    canonical form with a port in 0..65535;
  - feeding the same bytes as growing prefixes gives the same answer once
    complete, and None or the same error before (the supervisor's reads);
  - wanted() never asks for fewer bytes than are already held, unless the
    header is complete or refused.

Run it (any user):
    /opt/popd/bin/python tests/fuzz/fuzz_proxy_header.py -max_total_time=600 CORPUS_DIR
tests/unit/test_fuzz_short.py runs it for a few seconds from tests/fuzz/proxy_seeds.
"""
import ipaddress
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["popd"]):
    from popd import limits
    from popd.supervisor import proxy_header


def outcome(data):
    try:
        return proxy_header.parse(data)
    except proxy_header.ProxyHeaderError as e:
        assert str(e)
        return e


def check(data):
    result = outcome(data)
    if isinstance(result, proxy_header.ProxyHeader):
        assert 0 < result.length <= min(len(data), limits.PROXY_HEADER_MAX)
        assert outcome(data[:result.length]) == result
        if result.client_ip is not None:
            assert str(ipaddress.ip_address(result.client_ip)) == result.client_ip
            assert 0 <= result.client_port <= 65535
        complete_at = result.length
    else:
        complete_at = len(data) + 1
    # Growing prefixes, as the supervisor reads them: incomplete until the
    # header is whole; an error may appear early only if it is the answer.
    for cut in range(0, min(len(data), complete_at)):
        early = outcome(data[:cut])
        if isinstance(early, Exception):
            assert isinstance(result, Exception), (data, cut)
            return
        assert early is None or isinstance(result, proxy_header.ProxyHeader) and \
            early == result, (data, cut)


def TestOneInput(data):
    check(data[:limits.PROXY_HEADER_MAX + 64])


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
