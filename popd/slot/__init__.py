"""One pool slot: a child and its front, per connection.

- child.py  forked as root by the spawner; drops to `user` keeping only
            the right to become a mailbox owner, waits for the broker's
            grant, becomes the owner, serves the session (pop3/ and mail/)
- front.py  forked by the child as root; chroots, drops everything, and
            alone talks to the client before login (TLS, the
            AUTHORIZATION state), then pipes TLS for the child
- tls_pipe.py  the front after a TLS login: plaintext to the child, one
            fixed buffer per direction
- warmup.py run by the spawner (root) before it forks any slot: what a
            session sets up at first use, done once in the image slots share
- lock_helper.py  forked by the child before it becomes the owner; the only
            process with the spool's lock group, it creates and removes
            <mbox>.lock and nothing else
"""
