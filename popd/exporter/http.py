"""The exporter's HTTP: one request per connection, GET or HEAD /metrics.

Runs in: the metrics exporter (exporter/server.py).  Pure functions, no
I/O: parse_head() takes what a scraper sent up to the blank line and
says what to answer; answer() builds the bytes.  Headers are read for
nothing (Prometheus' Accept asks for OpenMetrics, which is all popd
writes), so only their shape is checked.  Every connection is closed
after its answer: no keep-alive, no pipelining, no request bodies.
"""
import re

CONTENT_TYPE = b"application/openmetrics-text; version=1.0.0; charset=utf-8"
PATH = b"/metrics"
_VERSION = re.compile(rb"HTTP/1\.[01]\Z")
# RFC 9110 token characters: the method and a header's name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
           405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


class Refusal(Exception):
    """The request gets this status and text instead of the metrics."""

    def __init__(self, status, text):
        super().__init__(text)
        self.status, self.text = status, text


def end_of_head(data):
    """Where the request's head ends (after its blank line), or None while
    it has not ended.  Bare LF line ends are accepted, as most servers do."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return i + len(sep)
    return None


def parse_head(head):
    """b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" -> "GET" or "HEAD";
    anything else raises Refusal with the status to answer."""
    lines = head.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    if not all(line.isascii() for line in lines):
        raise Refusal(400, "not ASCII")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]):
        raise Refusal(400, "not an HTTP/1.x request line")
    method, target, _ = parts
    if not target.startswith(b"/") or not all(0x21 <= c < 0x7f for c in target):
        raise Refusal(400, "bad request target")
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or not _printable(value):
            raise Refusal(400, "malformed header line")
    if method not in (b"GET", b"HEAD"):
        raise Refusal(405, "only GET and HEAD")
    if target.partition(b"?")[0] != PATH:
        raise Refusal(404, "the metrics are at /metrics")
    return method.decode()


def _printable(value):
    return all(c == 0x09 or 0x20 <= c < 0x7f for c in value)


def answer(status, body, head_only=False, content_type=CONTENT_TYPE):
    """The whole response: status line, headers, and the body unless the
    request was HEAD."""
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS[status]),
             b"Content-Type: " + content_type,
             b"Content-Length: %d" % len(body),
             b"Cache-Control: no-store",
             b"Connection: close"]
    if status == 405:
        lines.append(b"Allow: GET, HEAD")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


def refusal(status, text, head_only=False):
    return answer(status, text.encode() + b"\n", head_only,
                  content_type=b"text/plain; charset=utf-8")
