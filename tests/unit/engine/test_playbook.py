"""The playbook itself: output a test did not look at fails it, and establish() checks its own."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, PSH, SYN
from tests.unit import enginekit
from tests.unit.enginekit import C_ISN, O_ISN, OUR_SYN, T_ISN, Playbook, brief, client


def unexpected() -> str:
    """The failure verify_playbooks() raises now (the playbooks are forgotten either way)."""
    with pytest.raises(AssertionError) as failed:
        enginekit.verify_playbooks()
    return str(failed.value)


def test_output_nobody_looked_at_fails_the_test_and_names_the_step():
    pb = Playbook()
    pb.cap(client(C_ISN, 0, SYN))
    message = unexpected()
    assert "test_playbook.py:" in message and "cap(SYN seq=1000" in message and "emitted [SYN seq=1000" in message


def test_indexing_alone_is_not_looking():
    pb = Playbook()
    pb.establish()
    out = pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"x" * 3000))   # more than one segment
    assert out[0].seq == C_ISN + 1
    assert "len=1460" in unexpected()


def test_empty_output_and_output_compared_pass():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    pb.cap(client(C_ISN, 0, SYN))                                   # a duplicate: nothing emitted
    out = pb.resp(enginekit.target(T_ISN, C_ISN + 1, SYN | ACK)) + pb.advance(0.0)
    assert len(out) == 1
    enginekit.verify_playbooks()


def test_establish_checks_what_the_handshake_emits():
    pb = Playbook()
    pb.table.paused = True                                          # a paused table starts no session
    with pytest.raises(AssertionError):
        pb.establish()
    enginekit.PLAYBOOKS.clear()
