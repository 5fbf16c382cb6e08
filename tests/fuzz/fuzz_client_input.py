"""atheris fuzz target for popd's client-input path.

Every byte a client sends goes through LineReader, parse() and, for AUTH,
the SASL decoder, and then through the front's AUTHORIZATION dialogue
and, after a login, the child's TRANSACTION loop.  This target drives
fuzzer-chosen bytes through all of them, with popd's modules instrumented
for coverage (atheris.instrument_imports), and checks on every input:
  - the line reader gives exactly the lines of the model
    (tests/stubs.py: model_lines), however recv() cuts the stream;
  - parse() returns an error text or a command the table allows;
  - the SASL decoder refuses with a constant or decodes canonically;
  - every line a front writes is a known reply within RFC bounds, every
    AUTH_REQUEST it sends decodes on the broker's side, and the sessions
    end (no hang, no exception);
  - ipc.decode() of the same bytes, as frames a compromised front or
    child could send the broker, raises nothing but Violation.
No network and no privileges: the client is a scripted socket, the broker
and the child are stub ends of real SEQPACKET channels, TLS is simulated
(tests/stubs.py).

Input layout (so seeds are easy to write by hand): 4 parameter bytes, then
the client's byte stream.
  byte 0: bits 0-1 listener (none, starttls, implicit, none); bit 2
          auth.plaintext tls-only; bit 3 the child answers MAILBOX_ERR;
          bits 4-5 failed logins before the broker's last answer; bit 6
          that last answer is a final AUTH_FAIL instead of AUTH_OK; bit 7
          the client takes replies 7 bytes at a time
  byte 1: recv() chunk size, 1 + 16 * byte1
  byte 2: limits.max_bad_commands, 1 + byte2 % 30
  byte 3: every byte3-th recv() would block first (0: never)

Run it (as any user; the tree's popd is used, not an installed one):
    /opt/popd/bin/python tests/fuzz/fuzz_client_input.py -max_total_time=600 CORPUS_DIR
    /opt/popd/bin/python tests/fuzz/fuzz_client_input.py -atheris_runs=2000000
CORPUS_DIR (any empty directory to start) keeps the inputs that found new
coverage, so later runs go on from there; a crash is written to
./crash-<sha1> and replays with `... fuzz_client_input.py ./crash-<sha1>`.
tests/unit/test_fuzz_short.py runs it for 15 s in the test suite.
"""
import sys
import time
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["popd"]):
    # authorization, transaction, mbox and uidl are used through
    # tests/stubs.py: imported here so that they are instrumented too.
    from popd import ipc, limits  # noqa: F401
    from popd.mail import mbox, uidl  # noqa: F401
    from popd.pop3 import authorization, linereader, protocol, sasl, transaction  # noqa: F401

from tests import stubs  # noqa: E402  (after the instrumented imports, on purpose)

HEADER = 4
LISTENERS = ("none", "starttls", "implicit", "none")
OUTCOMES = {"disconnected", "quit", "login", "auth attempts exhausted",
            "too many bad commands", "mailbox error", "line too long", "timeout"}
SASL_ERRORS = {sasl.ERR_MALFORMED, sasl.ERR_AUTHZID}
# Frames a compromised front or child could send: what their receivers decode.
RECEIVERS = [(ipc.Channel.BROKER_FRONT, ipc.Role.BROKER),
             (ipc.Channel.BROKER_CHILD, ipc.Role.BROKER),
             (ipc.Channel.SUPERVISOR_BROKER, ipc.Role.BROKER),
             (ipc.Channel.SUPERVISOR_CHILD, ipc.Role.SUPERVISOR),
             (ipc.Channel.CHILD_FRONT, ipc.Role.CHILD)]


def chunks_of(stream, size, block_every):
    chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
    if block_every:
        for i in range(len(chunks) - 1, -1, -block_every):
            chunks.insert(i, stubs.WOULD_BLOCK)
    return chunks


def check_reader(stream, chunks):
    sock = stubs.ScriptedSocket(chunks)
    reader = linereader.LineReader(sock, limits.MAX_COMMAND_LINE)
    lines = []
    try:
        while True:
            try:
                lines.append(reader.read_line(time.monotonic() + 3600))
            except linereader.TooLong:
                return lines
            except linereader.Disconnected:
                break
            assert len(reader.buf) < reader.max_line + linereader.RECV_SIZE
        assert lines == stubs.model_lines(stream, reader.max_line)
        return lines
    finally:
        sock.close()


def check_line(line):
    if line is linereader.OVERLONG:
        return
    stubs.check_parsed(line, protocol.parse(line))
    for candidate in (line, line.partition(b" ")[2].partition(b" ")[2]):
        try:
            message = sasl.decode_response(candidate)
        except sasl.SaslError as e:
            assert e.args[0] in SASL_ERRORS
            continue
        try:
            creds = sasl.parse_plain(message)
        except sasl.SaslError as e:
            assert e.args[0] in SASL_ERRORS
            continue
        assert creds.authcid and 0 < len(creds.secret) <= limits.MAX_SECRET


def check_sessions(params, chunks):
    flags, _, budget_byte, _ = params
    fails = (flags >> 4) & 3
    last = stubs.AUTH_FAIL_FINAL if flags & 0x40 else stubs.AUTH_OK
    run = stubs.FrontRun(
        chunks, tls_mode=LISTENERS[flags & 3],
        plaintext="tls-only" if flags & 4 else "always",
        broker_answers=[stubs.AUTH_FAIL] * fails + [last],
        child_answer=stubs.MAILBOX_ERR if flags & 8 else stubs.MAILBOX_READY,
        max_bad_commands=1 + budget_byte % 30,
        send_limit=7 if flags & 0x80 else None)
    try:
        outcome = run.run()
        assert outcome in OUTCOMES, outcome
        stubs.check_front_output(bytes(run.client.sent))
        requests = run.requests()
        assert len(requests) <= fails + 1
        for request in requests:
            assert request.method in ("PASS", "PLAIN") and request.secret
        if not run.session.logged_in:
            return
        # The hand-over: what the front had read past the login, then the
        # rest of the stream, go to the child's session.
        leftover = run.session.reader.take_buffered()
        rest = list(run.client.chunks)
    finally:
        run.close()
    session, outcome, output = stubs.serve_child(rest, leftover,
                                                 max_bad_commands=1 + budget_byte % 30)
    assert outcome in OUTCOMES, outcome
    for line in output.split(b"\r\n"):
        if line.startswith((b"+OK", b"-ERR")):
            assert len(line) + 2 <= limits.MAX_RESPONSE_LINE


def check_frames(data):
    frame = data[:limits.MAX_FRAME]
    for channel, receiver in RECEIVERS:
        try:
            ipc.decode(frame, channel, receiver)
        except ipc.Violation:
            pass


def TestOneInput(data):
    if len(data) < HEADER:
        return
    params, stream = data[:HEADER], data[HEADER:]
    chunks = chunks_of(stream, 1 + 16 * params[1], params[3])
    for line in check_reader(stream, chunks):
        check_line(line)
    check_sessions(params, chunks)
    check_frames(stream)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
