"""atheris fuzz target for the metrics exporter's HTTP request parser
(popd/exporter/http.py), which reads what anyone who reaches
metrics.listen sends.

Checks on every input: end_of_head() is None or a position inside the
input just past a blank line; parse_head() returns GET or HEAD, or raises
Refusal with a status the exporter can answer, and nothing else; the
answer built for it is one well-formed HTTP response.

Run it (any user):
    /opt/popd/bin/python tests/fuzz/fuzz_metrics_request.py -max_total_time=600 CORPUS_DIR
tests/unit/test_fuzz_short.py runs it for a few seconds.
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["popd"]):
    from popd import limits
    from popd.exporter import http


def TestOneInput(data):
    data = data[:limits.METRICS_REQUEST_MAX + 64]
    end = http.end_of_head(data)
    if end is None:
        return
    assert 0 < end <= len(data), (data, end)
    assert data[:end].endswith((b"\n\n", b"\r\n\r\n")), (data, end)
    try:
        method = http.parse_head(data[:end])
    except http.Refusal as r:
        assert r.status in http.REASONS and r.text
        response = http.refusal(r.status, r.text)
    else:
        assert method in ("GET", "HEAD")
        response = http.answer(200, b"# EOF\n", method == "HEAD")
    head, sep, _ = response.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 ") and head.isascii()


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
