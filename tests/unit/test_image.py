"""What the supervisor's image holds: every pool slot is forked from it (via
the spawner), so each module here is paid at every fork and exit, and
modules with fork handlers run Python code in every new process.  See
logsetup.py (logging, threading), broker_link.py (passlib) and seccomp.py
(no Python binding)."""
import subprocess
import sys

from tests.daemon import REPO, output_of_child

KEPT_OUT = ("logging", "threading", "passlib", "argon2", "pyseccomp", "random")


def test_supervisor_image_leaves_out_costly_modules():
    code = ("import sys, popd.cli, popd.supervisor.loop; "
            f"print(' '.join(m for m in {KEPT_OUT!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == "", f"imported by the supervisor: {out}"



def test_a_slots_modules_come_before_the_supervisors():
    """cli.py imports a slot's code first, so that its objects sit together
    in the allocator's pools rather than among the supervisor's."""
    code = "import sys, popd.cli; print(' '.join(sys.modules))"
    names = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    slot = [i for i, n in enumerate(names) if n.startswith(("popd.slot", "popd.pop3",
                                                            "popd.mail"))]
    supervisor = [i for i, n in enumerate(names) if n.startswith("popd.supervisor")]
    assert slot and supervisor and max(slot) < min(supervisor)

# -- the free blocks the spawner takes before it forks (unix/malloc.py) ------

def test_object_of_size_lands_in_each_size_class():
    import gc

    from popd.unix import malloc
    for size in range(16, 513, 16):
        obj = malloc.object_of_size(size)
        assert -(-sys.getsizeof(obj) // 16) * 16 == size, (size, type(obj))
        assert not gc.is_tracked(obj)
        assert malloc.object_of_size(size) is not obj          # a new object each call


def test_fill_free_blocks_takes_the_holes_left_in_pools():
    # In a fresh interpreter: free every other object of 40,000, leaving
    # holes in pools of every size class, then take them.
    code = """if 1:
        import sys
        from popd.unix import malloc
        made = [bytes(n % 480 + 15) for n in range(40000)]
        del made[::2]
        before = malloc.free_blocks()
        taken = malloc.fill_free_blocks()
        after = malloc.free_blocks()
        print(sum(before.values()), taken, sum(after.values()), len(before))
        print("fd 2 is back", file=sys.stderr)
    """
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True)
    before, taken, after, classes = map(int, run.stdout.split())
    assert classes == 32
    assert before >= 20000 and taken >= before - 100
    # What is left is in pools opened while filling (mostly untouched pages).
    assert after < before / 10, (before, after)
    assert run.stderr == "fd 2 is back\n"


def test_fill_free_blocks_takes_nothing_from_a_report_read_wrong(monkeypatch):
    from popd.unix import malloc
    monkeypatch.setattr(malloc, "free_blocks", lambda: {16: malloc.MAX_FILL})
    assert malloc.fill_free_blocks() == 0


# -- what the spawner sets up once for every slot (slot/warmup.py) -----------

def _blocks_kept_by_a_first_uidl(warm_first):
    """pymalloc blocks still allocated after one UIDL base in a fresh
    process: what a slot would keep in its private memory."""
    code = ("import sys, popd.cli\n"
            "from popd.mail import uidl\n"
            "from popd.slot import warmup\n"
            f"if {warm_first}:\n"
            "    warmup.warm()\n"
            "before = sys.getallocatedblocks()\n"
            "uidl.base_id(b'From a@b Thu Nov 26 10:00:00 2026\\nSubject: x\\n')\n"
            "print(sys.getallocatedblocks() - before)\n")
    return int(subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout)


def test_warm_up_builds_what_a_first_uidl_would_keep():
    """base64.b32encode builds a 1,024-entry table at its first call: built
    by the warm-up, a slot's first UIDL base keeps next to nothing."""
    assert _blocks_kept_by_a_first_uidl(False) > 1000      # the table, built per slot
    assert _blocks_kept_by_a_first_uidl(True) < 50


def test_warm_up_handshake_completes_and_a_failed_one_is_only_logged(monkeypatch):
    import ssl

    import trustme

    from popd.slot import warmup
    from popd.unix import logsetup, tls

    cert = trustme.CA().issue_cert("localhost")
    good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(good)
    good.num_tickets = 0
    warmup._warm_tls(good)                                  # raises if it did not finish

    lines = []

    class Keep(logsetup.Handler):
        def emit(self, level, text):
            lines.append(text)

    monkeypatch.setattr(logsetup.log, "handler", Keep())
    monkeypatch.setattr(tls, "_context", ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # no certificate
    warmup.warm()
    assert len(lines) == 1 and "TLS warm-up handshake failed" in lines[0], lines


def test_slots_forked_after_the_warm_up_handshake_draw_their_own_randomness():
    """The warm-up leaves OpenSSL's random generators seeded in the image
    every front inherits; OpenSSL must reseed them in each fork (it checks
    the pid), or two fronts would make the same keys.  Two forks each run
    a TLS 1.2 handshake: their Finished messages (tls-unique) differ."""
    import socket
    import ssl

    import trustme

    from popd.slot import warmup

    cert = trustme.CA().issue_cert("localhost")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    server_ctx.num_tickets = 0
    warmup._warm_tls(server_ctx)

    def handshake():
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        server = server_ctx.wrap_socket(a, server_side=True,
                                        do_handshake_on_connect=False)
        client = client_ctx.wrap_socket(b, do_handshake_on_connect=False)
        warmup._handshake_both(server, client)
        return server.get_channel_binding("tls-unique")

    first, second = output_of_child(handshake), output_of_child(handshake)
    assert len(first) >= 12 and len(second) >= 12
    assert first != second
