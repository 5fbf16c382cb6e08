"""The on-disk index: used only when it fits, extended for appended mail,
hostile bytes never trusted."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd import index_cache, mbox, uidl


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
    bases = uidl.compute_bases(fd, index)
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
    index_cache.save(cache, fd, index, None)
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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2000), st.binary(max_size=8))
def test_hostile_cache_bytes(tmp_path_factory, garbage, at, patch):
    tmp = tmp_path_factory.mktemp("c")
    path, fd = make(tmp, b"".join(message(i) for i in range(5)))
    cache = str(tmp / "k.index")
    index_cache.save(cache, fd, mbox.scan(fd), uidl.compute_bases(fd, mbox.scan(fd)))
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
