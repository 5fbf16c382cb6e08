"""The metrics exporter's HTTP request parser (popd/exporter/http.py):
what each request gets, and for any bytes, either a method or a Refusal
with a status popd knows how to answer."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popd import limits
from popd.exporter import http


@pytest.mark.parametrize("head, expected", [
    (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9106\r\nAccept: "
     b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n", "GET"),
    (b"HEAD /metrics HTTP/1.0\r\n\r\n", "HEAD"),
    (b"GET /metrics?name[]=x HTTP/1.1\n\n", "GET"),
])
def test_requests_for_the_metrics(head, expected):
    assert http.end_of_head(head) == len(head)
    assert http.parse_head(head) == expected


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 405),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),                      # HTTP/0.9
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET http://x/metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 400),   # a TLS hello
])
def test_refusals(head, status):
    with pytest.raises(http.Refusal) as e:
        http.parse_head(head)
    assert e.value.status == status


def test_answers_are_well_formed():
    full = http.answer(200, b"# EOF\n")
    head, _, body = full.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"# EOF\n"
    assert b"Content-Length: 6" in head and b"Connection: close" in head
    assert http.answer(200, b"# EOF\n", head_only=True).endswith(b"\r\n\r\n")
    assert b"Allow: GET, HEAD" in http.refusal(405, "only GET and HEAD")
    for status in http.REASONS:
        assert http.refusal(status, "x").startswith(b"HTTP/1.1 %d " % status)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=limits.METRICS_REQUEST_MAX))
def test_any_bytes_get_a_method_or_a_refusal(data):
    end = http.end_of_head(data)
    if end is None:
        return
    assert 0 < end <= len(data)
    try:
        method = http.parse_head(data[:end])
    except http.Refusal as r:
        assert r.status in http.REASONS and r.text
        return
    assert method in ("GET", "HEAD")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                        max_size=40), max_size=8),
       st.sampled_from(["GET", "HEAD", "PUT", "OPTIONS"]),
       st.sampled_from(["/metrics", "/", "/metrics?x=1", "/other"]))
def test_request_lines_with_any_headers(values, method, target):
    head = f"{method} {target} HTTP/1.1\r\n".encode()
    head += b"".join(f"X-H{i}: {v}\r\n".encode() for i, v in enumerate(values)) + b"\r\n"
    if method not in ("GET", "HEAD"):
        expected = 405
    elif target.partition("?")[0] != "/metrics":
        expected = 404
    else:
        assert http.parse_head(head) == method
        return
    with pytest.raises(http.Refusal) as e:
        http.parse_head(head)
    assert e.value.status == expected
