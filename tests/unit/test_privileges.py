"""capget/capset through the packed buffer (unix/privileges.py), checked
against the kernel's own view in /proc/self/status, in a forked child (the
test process keeps its capabilities)."""
import ast
import os

import pytest

from popd.unix import privileges
from tests.daemon import output_of_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SETID = privileges.SETID_CAPS
HIGH = 1 << privileges.CAP_LAST          # a capability in the high 32-bit word


def status_caps():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff"):
                fields[key] = int(value, 16)
    return fields["CapEff"], fields["CapPrm"], fields["CapInh"]


def in_a_fork(action):
    """Run action() in a child; its return value comes back through a pipe."""
    data = output_of_child(lambda: repr(action()).encode())
    assert data, "the child failed"
    return ast.literal_eval(data.decode())    # what repr() wrote


def test_capset_then_capget_round_trip_both_words():
    assert privileges.CAP_LAST >= 32           # so HIGH is in the second word

    def action():
        privileges.capset(SETID, SETID | HIGH, HIGH)
        return privileges.capget(), status_caps()

    got, kernel = in_a_fork(action)
    assert got == kernel == (SETID, SETID | HIGH, HIGH)


def test_capset_refused_is_a_privilege_error():
    def action():
        privileges.capset(0, 0)
        try:
            privileges.capset(SETID, SETID)     # cannot gain what was dropped
        except privileges.PrivilegeError as e:
            return ("refused", str(e).startswith("capset: "))
        return ("granted",)

    assert in_a_fork(action) == ("refused", True)
