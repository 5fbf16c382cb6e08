"""Short runs of the fuzz targets: client input (tests/fuzz/fuzz_client_input.py),
the PROXY header parser (tests/fuzz/fuzz_proxy_header.py) and the metrics
exporter's HTTP requests (tests/fuzz/fuzz_metrics_request.py).

CI runs it for FUZZ_SECONDS from the checked-in seeds and dictionary; a
longer run is documented in the target's docstring.  atheris 3.0.0 is the
last release with Python 3.11 wheels; where it is not installed (newer
interpreters without the test extra's pin), this test is skipped.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

atheris = pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
FUZZ_SECONDS = 15


def fuzz(tmp_path, target, seconds, *extra, seeds=None):
    """Run one target for `seconds` from a fresh corpus (and its seeds);
    it must finish cleanly, with no crash file, after 1000 runs at least.
    Returns what libFuzzer printed."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    run = subprocess.run(
        [sys.executable, str(FUZZ / target), f"-max_total_time={seconds}", "-timeout=10",
         "-rss_limit_mb=1024", *extra, str(corpus), *([str(seeds)] if seeds else [])],
        cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert not list(tmp_path.glob("crash-*")), out[-4000:]
    runs = re.search(r"Done (\d+) runs", out)
    assert runs and int(runs.group(1)) > 1000, out[-2000:]
    return out


def test_fuzz_client_input_for_a_few_seconds(tmp_path):
    out = fuzz(tmp_path, "fuzz_client_input.py", FUZZ_SECONDS, f"-dict={FUZZ / 'pop3.dict'}",
               seeds=FUZZ / "seeds")
    # The seeds reach the sessions: coverage well past the reader alone.
    cov = [int(c) for c in re.findall(r"cov: (\d+)", out)]
    assert cov and max(cov) > 300, out[-2000:]


def test_fuzz_proxy_header_for_a_few_seconds(tmp_path):
    """The PROXY header parser runs as root: its own target, from its seeds."""
    fuzz(tmp_path, "fuzz_proxy_header.py", 8, seeds=FUZZ / "proxy_seeds")


def test_fuzz_metrics_request_for_a_few_seconds(tmp_path):
    """What a scraper sends to metrics.listen."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "prometheus").write_bytes(
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9106\r\nUser-Agent: Prometheus/2.45\r\n"
        b"Accept: application/openmetrics-text;version=1.0.0\r\n\r\n")
    fuzz(tmp_path, "fuzz_metrics_request.py", 5)
