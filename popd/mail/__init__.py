"""The maildrop, read and changed as its owner (no capabilities).

- maildrop.py      one user's maildrop for one session: open, lock,
                   recover, index, ids, update
- mbox.py          scan and stream an mbox (pure functions on an fd)
- mbox_update.py   the crash-safe update (journal, compaction, recovery)
- locking.py       fcntl and dot-locks (the lock helper that takes them
                   with mail.dotlock_group is slot/lock_helper.py)
- index_cache.py   the per-maildrop index kept in the state directory
- uidl.py          popd's own UIDLs
- foreign_uidl.py  UIDLs kept from another server (mail.uidl_source)
- expiry.py        RFC 2449 EXPIRE (mail.expire_days)
- state_files.py   bounded reads and atomic writes of the state files
"""
