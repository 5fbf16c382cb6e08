"""UIDLs kept from another server (mail.uidl_source): each source's rules,
refusals falling back to popd's ids, and the once-only reading that keeps
forged headers in new mail from taking anyone's id."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from popd.mail import foreign_uidl, maildrop, uidl

BOTH = ("x-uidl", "dovecot", "popd")


def message(i, headers=b"", body=b"body\n"):
    return (b"From bob@example.org Thu Dec  3 16:00:%02d 2026\n" % (i % 60)
            + b"From: bob@example.org\nSubject: m%d\n" % i + headers + b"\n" + body + b"\n")


def dovecot(i, uid, base=None):
    imap = b"X-IMAPbase: %d 0000000009\n" % base if base is not None else b""
    return message(i, imap + b"X-UID: %d\nStatus: O\nX-Keywords:       \n" % uid)


def xuidl(i, value):
    return message(i, b"X-UIDL: " + value + b"\n")


class Box:
    def __init__(self, tmp_path, data, sources=BOTH):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.path = tmp_path / "mbox"
        self.path.write_bytes(data)
        self.state = tmp_path / "state"
        (self.state / str(os.getuid())).mkdir(parents=True, exist_ok=True)
        self.sources = sources

    def session(self, delete=(), sources=None):
        drop = maildrop.Maildrop(str(self.path), os.getuid(), str(self.state),
                                 uidl_source=sources or self.sources).open()
        try:
            ids = drop.ids()
            drop.update(set(delete))
            return ids
        finally:
            drop.close()

    def append(self, data):
        with open(self.path, "ab") as f:
            f.write(data)

    def foreign_file(self):
        return maildrop.Maildrop(str(self.path), os.getuid(), str(self.state)).foreign_file


def popd_shaped(uid):
    return uidl.popd_shaped(uid) is not None


def test_dovecot_ids_are_its_default_format(tmp_path):
    # What Dovecot 2.3 itself printed for such a file (tests/system/
    # test_migration.py compares against the real server).
    box = Box(tmp_path, dovecot(1, 1, base=1796313369) + dovecot(2, 2) + dovecot(3, 7))
    assert box.session() == ["000000016b119119", "000000026b119119", "000000076b119119"]


def test_x_uidl_first_then_dovecot_then_popd(tmp_path):
    box = Box(tmp_path, (xuidl(1, b"c10c5b9b54051b135485d141b78745c4.1796313403.1")
                         + dovecot(2, 5, base=77) + message(3) + dovecot(4, 6)))
    ids = box.session()
    # The first message has no X-UID, so X-IMAPbase is only read from it.
    assert ids[0] == "c10c5b9b54051b135485d141b78745c4.1796313403.1"
    assert not ids[1].endswith("0000004d") and popd_shaped(ids[1])
    assert popd_shaped(ids[2]) and popd_shaped(ids[3])
    box2 = Box(tmp_path / "b", dovecot(1, 5, base=77) + xuidl(2, b"qp-2") + message(3))
    assert box2.session()[:2] == ["000000050000004d", "qp-2"]


def test_bad_and_duplicate_ids_fall_back_to_popds_own(tmp_path, capfd):
    bad = [b"has space", b"x" * 71, b"caf\xc3\xa9", b"a" * 24, b"b" * 24 + b"-3", b""]
    data = xuidl(0, b"dup") + xuidl(9, b"dup")
    data += b"".join(xuidl(i + 1, v) for i, v in enumerate(bad)) + xuidl(10, b"x" * 70)
    ids = Box(tmp_path, data, ("x-uidl",)).session()
    assert ids[0] == "dup" and ids[-1] == "x" * 70
    assert all(popd_shaped(uid) for uid in ids[1:-1])
    assert len(set(ids)) == len(ids)
    logged = capfd.readouterr().err
    assert "an earlier message's id" in logged and "more ids from the file refused" in logged


def test_dovecot_uids_must_rise_and_need_uidvalidity(tmp_path):
    ids = Box(tmp_path, dovecot(1, 3, base=10) + dovecot(2, 2) + dovecot(3, 3)
              + dovecot(4, 4) + message(5, b"X-UID: 0x5\n")).session()
    assert ids[0] == "000000030000000a" and ids[3] == "000000040000000a"
    assert all(popd_shaped(uid) for uid in ids[1:3] + ids[4:])
    no_base = Box(tmp_path / "n", dovecot(1, 1) + dovecot(2, 2)).session()
    assert all(popd_shaped(uid) for uid in no_base)


def test_read_once_so_forged_headers_in_new_mail_take_no_id(tmp_path):
    box = Box(tmp_path, dovecot(1, 1, base=5) + xuidl(2, b"old-2") + dovecot(3, 2))
    first = box.session()
    assert first == ["0000000100000005", "old-2", "0000000200000005"]
    box.session(delete={0})                      # the client deleted the first
    box.append(xuidl(4, b"0000000100000005") + xuidl(5, b"fresh") + dovecot(6, 3))
    later = box.session()
    assert later[:2] == first[1:]                # kept, though the X-IMAPbase went too
    assert all(popd_shaped(uid) for uid in later[2:])
    assert len(set(later)) == len(later)


def test_ids_survive_deletions_and_stay_whatever_the_config_says(tmp_path):
    data = b"".join(xuidl(i, b"qp-%d" % i) for i in range(6))
    box = Box(tmp_path, data, ("x-uidl",))
    assert box.session() == [f"qp-{i}" for i in range(6)]
    assert box.session(delete={1, 4}) == [f"qp-{i}" for i in range(6)]
    assert box.session(sources=("popd",)) == ["qp-0", "qp-2", "qp-3", "qp-5"]
    _, remembered = foreign_uidl.load(box.foreign_file())
    assert remembered == ["qp-0", "qp-2", "qp-3", "qp-5"]


def test_identical_heads_share_a_base_and_keep_their_own_ids(tmp_path):
    # Two deliveries of one message: Dovecot gave them different X-UIDs,
    # which popd's base leaves out; each copy keeps its id in file order.
    twin = lambda uid, base=None: (  # noqa: E731
        (b"X-IMAPbase: %d 9\n" % base if base else b"") + b"X-UID: %d\n" % uid)
    data = message(1, twin(1, 42)) + message(2, twin(2)) + message(2, twin(3))
    box = Box(tmp_path, data, ("dovecot",))
    assert box.session() == ["000000010000002a", "000000020000002a", "000000030000002a"]
    assert box.session(delete={1}) == ["000000010000002a", "000000020000002a",
                                       "000000030000002a"]
    assert box.session() == ["000000010000002a", "000000030000002a"]


def test_no_source_no_file_and_empty_first_open_is_remembered(tmp_path):
    box = Box(tmp_path, xuidl(1, b"qp-1"), ("popd",))
    assert popd_shaped(box.session()[0])
    assert not os.path.exists(box.foreign_file())
    empty = Box(tmp_path / "e", b"")
    os.unlink(empty.path)                        # no mailbox yet at the first open
    assert empty.session() == []
    empty.path.write_bytes(xuidl(1, b"forged"))
    assert popd_shaped(empty.session()[0])


def test_a_damaged_map_is_rebuilt_from_the_headers(tmp_path):
    box = Box(tmp_path, xuidl(1, b"qp-1") + message(2) + xuidl(3, b"qp-3"), ("x-uidl",))
    ids = box.session()
    assert ids[0] == "qp-1" and ids[2] == "qp-3" and popd_shaped(ids[1])
    path = box.foreign_file()
    good = open(path).read()
    magic, bases, line, _ = good.split("\n")
    assert line == "qp-1  qp-3"
    for bad in ("", good.replace("ids 2", "ids 1"), good + "x", good.rstrip("\n"),
                good.replace("qp-3", "qp-1"), good.replace("qp-3", "a" * 24),
                good.replace("qp-3", "b" * 24 + "-7"), good.replace("qp-3", "x" * 71),
                good.replace(line, line + " qp-4"), good.replace(bases, bases[:-1] + "A"),
                good.replace(bases, bases[:-1] + "1"), good.replace("qp-1", "qp\x7f1")):
        with open(path, "w") as f:
            f.write(bad)
        assert foreign_uidl.load(path) is None, bad
        assert box.session() == ids
        assert open(path).read() == good


def test_a_rewritten_file_keeps_each_message_its_id(tmp_path):
    # An MUA rewrote the mbox in another order: the map no longer matches
    # the file's first messages, and each message is found by its base.
    one, two, three = xuidl(1, b"qp-1"), message(2), xuidl(3, b"qp-3")
    box = Box(tmp_path, one + two + three, ("x-uidl",))
    ids = box.session()
    box.path.write_bytes(three + one + two)
    assert box.session() == [ids[2], ids[0], ids[1]]
    box.path.write_bytes(three + two)
    assert box.session() == [ids[2], ids[1]]
    assert foreign_uidl.load(box.foreign_file())[1] == ["qp-3", None]


header_values = st.binary(min_size=0, max_size=80).filter(lambda v: b"\n" not in v)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"X-UIDL", b"x-uid", b"X-IMAPbase", b"X-Other"]),
                          header_values), max_size=12),
       st.permutations(BOTH[:2]))
def test_any_headers_give_unique_valid_ids(tmp_path_factory, headers, order):
    data = b"".join(message(i, name + b": " + value + b"\n")
                    for i, (name, value) in enumerate(headers))
    ids = Box(tmp_path_factory.mktemp("h"), data, (*order, "popd")).session()
    assert len(ids) == len(headers) and len(set(ids)) == len(ids)
    assert all(foreign_uidl.valid(uid) or popd_shaped(uid) for uid in ids)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.sampled_from(["popd-foreign-ids 2", "a" * 24, "b" * 48, "qp-1",
                                           " ", "", "qp-1 qp-2", "x" * 71, "a" * 24 + "-2"]),
                          max_size=6).map(lambda parts: "\n".join(parts).encode())))
def test_any_map_file_loads_as_none_or_a_consistent_map(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("f") / "map"
    path.write_bytes(data)
    loaded = foreign_uidl.load(str(path))
    if loaded is not None:
        text, ids = loaded
        assert len(text) == len(ids) * uidl.BASE_LEN
        given = [uid for uid in ids if uid is not None]
        assert len(set(given)) == len(given) and all(foreign_uidl.valid(uid) for uid in given)


def test_a_refused_header_is_logged_bounded_and_sanitised(tmp_path, capfd):
    huge = b"\x1b[31m" + b"x" * 60000
    ids = Box(tmp_path, xuidl(1, huge) + message(2, b"X-UID: 9\x1b\n"), BOTH).session()
    assert all(popd_shaped(uid) for uid in ids)
    logged = capfd.readouterr().err
    refusals = [line for line in logged.splitlines() if "keeps popd's id" in line]
    assert len(refusals) == 2 and all(len(line) < 400 for line in refusals)
    assert "\x1b" not in logged
