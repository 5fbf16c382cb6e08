"""The auth broker: the only processes that see password hashes.

Runs as `broker_user` (no capabilities, no network socket); its hashing
workers too, with the shadow group for the system and pam backends:

- broker.py       broker loop, per-channel login state, scheduled answers,
                  grants; the hashing workers
- accounts.py     account backends: passwd-file, system, pam
- passwd.py       Dovecot passwd-file entries and hash verification
- libcrypt.py     the system's crypt(3) for yescrypt and friends
- weak_hashes.py  Dovecot's legacy schemes, behind allow_weak_schemes
- pam_auth.py     the PAM conversation
- throttle.py     failure counters per address and per user
"""
