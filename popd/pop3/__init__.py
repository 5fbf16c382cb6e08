"""The POP3 protocol: sockets and bytes only, no files, no privileges.

- linereader.py     the one place client bytes enter
- protocol.py       the engine: command table, dispatch by state, replies
- authorization.py  AUTHORIZATION state (in the front)
- sasl.py           SASL PLAIN decoding (in the front)
- transaction.py    TRANSACTION and UPDATE states (in the child, as the
                    mailbox owner)
"""
