"""The on-disk index: used only when it fits, extended for appended mail,
hostile bytes never trusted."""
import os
import zlib
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popd.mail import index_cache, maildrop, mbox, uidl


def message(n):
    return (b"From s%d@example.org Thu Nov 26 10:00:00 2026\nSubject: %d\n\nbody %d\n.dot\n\n"
            % (n, n, n))


def make(tmp_path, data):
    path = tmp_path / "mbox"
    path.write_bytes(data)
    return path, os.open(path, os.O_RDWR)


def test_round_trip_and_append(tmp_path):
    path, fd = make(tmp_path, b"".join(message(i) for i in range(50)))
    index = mbox.scan(fd)
    bases = "".join(uidl.compute_bases(fd, index))
    cache = str(tmp_path / "k.index")
    index_cache.save(cache, fd, index, bases)
    loaded, loaded_bases = index_cache.load(cache, fd)
    assert loaded == index and loaded_bases == bases
    with open(path, "ab") as f:                      # new mail arrives
        f.write(message(50) + message(51))
    loaded, loaded_bases = index_cache.load(cache, fd)
    assert loaded == mbox.scan(fd) and len(loaded) == 52
    assert loaded_bases == bases                      # the known ones
    os.close(fd)


def test_rewritten_file_is_rescanned(tmp_path):
    path, fd = make(tmp_path, message(1) + message(2))
    index = mbox.scan(fd)
    cache = str(tmp_path / "k.index")
    index_cache.save(cache, fd, index, "".join(uidl.compute_bases(fd, index)))
    assert index_cache.load(cache, fd) is not None
    os.pwrite(fd, b"X", 0)                            # same size, now not an mbox
    assert index_cache.load(cache, fd) is None
    os.pwrite(fd, b"F", 0)
    os.utime(path, ns=(1, 1))                         # same bytes, other mtime
    assert index_cache.load(cache, fd) is None
    os.ftruncate(fd, 10)                              # shorter
    assert index_cache.load(cache, fd) is None
    os.close(fd)


def test_extended_scan_equals_full_scan(tmp_path):
    data = b"".join(message(i) for i in range(30))
    path, fd = make(tmp_path, data)
    for cut in (0, len(message(0)), len(message(0)) * 7):
        part = mbox.scan(fd, cut)
        assert mbox.scan(fd, extend=part) == mbox.scan(fd)
    os.close(fd)


def test_mail_appended_mid_line_is_not_extended_as_a_new_message(tmp_path):
    """The indexed bytes end without a LF (a last message with no final
    newline) and a delivery appends ``From ...`` right after: not at the
    start of a line, that is content, as a full scan says.  The cache must
    not count a message the scan does not (else every QUIT's check would
    disagree with it, for good)."""
    path, fd = make(tmp_path, message(0) + b"From s1@example.org Thu Nov 26 10:00:00 2026\n"
                    b"Subject: 1\n\nno final newline")
    index = mbox.scan(fd)
    cache = str(tmp_path / "k.index")
    index_cache.save(cache, fd, index, "".join(uidl.compute_bases(fd, index)))
    with open(path, "ab") as f:
        f.write(message(2))
    with pytest.raises(mbox.MboxFormatError):
        mbox.scan(fd, extend=mbox.scan(fd, index.size))
    assert index_cache.load(cache, fd) is None        # a full scan instead
    assert len(mbox.scan(fd)) == 2
    os.close(fd)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2000), st.binary(max_size=8))
def test_hostile_cache_bytes(tmp_path_factory, garbage, at, patch):
    tmp = tmp_path_factory.mktemp("c")
    path, fd = make(tmp, b"".join(message(i) for i in range(5)))
    cache = str(tmp / "k.index")
    index_cache.save(cache, fd, mbox.scan(fd), "".join(uidl.compute_bases(fd, mbox.scan(fd))))
    good = open(cache, "rb").read()
    for data in (garbage, good[:at] + patch + good[at + len(patch):], good[:at]):
        with open(cache, "wb") as f:
            f.write(data)
        result = index_cache.load(cache, fd)
        if result is not None:
            # Whatever is accepted describes this file correctly.
            index, bases = result
            assert index == mbox.scan(fd)
    os.close(fd)


def with_crc(body):
    """A cache file whose CRC fits: what a user forging their own cache writes."""
    return body + index_cache._CHECK.pack(zlib.crc32(body))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from([-1, 0, 1, 7, 1 << 40, -(1 << 62)]),
       st.integers(0, 3))
def test_forged_columns_are_refused_or_harmless(tmp_path_factory, at, value, column):
    # The CRC is right, the numbers are not: the positions check (or the
    # sampled digest) refuses them, or what is accepted reads only inside
    # each message's span and inside the file.
    tmp = tmp_path_factory.mktemp("f")
    path, fd = make(tmp, b"".join(message(i) for i in range(7)))
    index = mbox.scan(fd)
    cache = str(tmp / "k.index")
    index_cache.save(cache, fd, index, "".join(uidl.compute_bases(fd, index)))
    body = bytearray(open(cache, "rb").read()[:-index_cache._CHECK.size])
    pos = index_cache._HEADER.size + 8 * (column * len(index) + at % len(index))
    body[pos:pos + 8] = array("q", [value]).tobytes()
    with open(cache, "wb") as f:
        f.write(with_crc(bytes(body)))
    result = index_cache.load(cache, fd)
    if result is not None:
        loaded, _ = result
        size = os.fstat(fd).st_size
        for n in range(len(loaded)):
            assert 0 <= loaded.offset(n) <= loaded.start(n) <= loaded.stop(n) <= loaded.end(n)
            assert loaded.end(n) <= size and loaded.octets(n) >= 0
            b"".join(mbox.iter_message(fd, loaded, n))
    os.close(fd)


def test_old_format_and_wrong_sizes_are_refused(tmp_path):
    path, fd = make(tmp_path, message(1) + message(2))
    index = mbox.scan(fd)
    cache = str(tmp_path / "k.index")
    index_cache.save(cache, fd, index, "".join(uidl.compute_bases(fd, index)))
    good = open(cache, "rb").read()[:-index_cache._CHECK.size]
    for body in (b"popdidx1" + good[8:],                 # the previous format
                 good + b"a",                            # one id character too many
                 good[:-1],                              # one too few
                 good[:-1] + b"A"):                      # not base32
        with open(cache, "wb") as f:
            f.write(with_crc(body))
        assert index_cache.load(cache, fd) is None
    os.close(fd)


def test_maildrop_writes_the_cache_once_complete(tmp_path):
    # First open: scan, ids and cache together; a repeat open rewrites
    # nothing; new mail is indexed and identified at open, cache rewritten.
    path, fd = make(tmp_path, b"".join(message(i) for i in range(20)))
    os.close(fd)
    state = tmp_path / "state"
    (state / str(os.getuid())).mkdir(parents=True)

    def session():
        drop = maildrop.Maildrop(str(path), os.getuid(), str(state)).open()
        try:
            return drop.index, drop.ids(), os.stat(drop.index_file)
        finally:
            drop.close()

    index, ids, st1 = session()
    fd = os.open(path, os.O_RDONLY)
    assert index == mbox.scan(fd)
    assert ids == uidl.assign(uidl.compute_bases(fd, index), {})[0]
    _, ids2, st2 = session()
    assert ids2 == ids and (st2.st_ino, st2.st_mtime_ns) == (st1.st_ino, st1.st_mtime_ns)
    with open(path, "ab") as f:
        f.write(message(20) + message(1))             # new mail, one a twin
    index3, ids3, st3 = session()
    assert index3 == mbox.scan(fd) and st3.st_ino != st1.st_ino
    assert ids3[:20] == ids and len(set(ids3)) == 22
    cache_file = maildrop.Maildrop(str(path), os.getuid(), str(state)).index_file
    loaded, text = index_cache.load(cache_file, fd)
    assert loaded == index3 and uidl.split(text) == uidl.compute_bases(fd, index3)
    os.close(fd)
