"""Pairing the two deliveries of an urgent command (cellctl.command_twins): pure logic."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.command_twins import Channel, Twins, fingerprint

MAIN, URGENT = Channel.MAIN, Channel.URGENT


def both_up() -> Twins:
    t = Twins(window_s=60.0)
    t.subscribed(MAIN)
    t.subscribed(URGENT)
    return t


@settings(max_examples=300, deadline=None)
@given(
    sent=st.lists(st.sampled_from([b"a", b"b", b"c"]), max_size=30),
    order=st.lists(st.booleans(), max_size=60),
)
def test_every_command_is_handled_once_however_the_copies_interleave(
    sent: list[bytes], order: list[bool]
) -> None:
    """Both connections deliver the same commands in the same order (the broker keeps a
    publisher's order per subscriber), at their own pace; identical commands included."""
    t = both_up()
    queues = {URGENT: list(sent), MAIN: list(sent)}
    handled: Counter[bytes] = Counter()
    picks = iter(order)
    while queues[URGENT] or queues[MAIN]:
        ch = URGENT if next(picks, True) else MAIN
        if not queues[ch]:
            ch = MAIN if ch is URGENT else URGENT
        key = queues[ch].pop(0)
        if t.arrived(ch, key, 0.0):
            handled[key] += 1
    assert handled == Counter(sent)
    assert t.owed(MAIN) == t.owed(URGENT) == 0
    assert t.dropped == len(sent)


def test_a_connection_that_is_down_owes_nothing_and_forgets_what_it_owed() -> None:
    t = Twins()
    t.subscribed(MAIN)
    # The urgent connection is not subscribed: the main copy is handled, nothing owed.
    assert t.arrived(MAIN, b"x", 0.0)
    assert t.owed(URGENT) == 0
    t.subscribed(URGENT)
    assert t.arrived(URGENT, b"y", 1.0)
    assert t.owed(MAIN) == 1
    # The main connection drops before its copy of y came: y's next delivery is a new one.
    t.disconnected(MAIN)
    assert t.owed(MAIN) == 0
    assert t.arrived(URGENT, b"y", 2.0)
    t.subscribed(MAIN)
    assert t.arrived(MAIN, b"y", 3.0)  # a new y: handled, its urgent twin is owed
    assert not t.arrived(URGENT, b"y", 3.1)


def test_what_is_owed_expires_and_is_bounded() -> None:
    t = Twins(window_s=10.0, max_owed=3)
    t.subscribed(MAIN)
    t.subscribed(URGENT)
    assert t.arrived(URGENT, b"k", 0.0)
    # Its main twin never comes (published before main subscribed): after the window a
    # new k from main is handled, not taken for the old twin.
    assert t.arrived(MAIN, b"k", 11.0)
    assert t.owed(MAIN) == 0 and t.owed(URGENT) == 1
    for i in range(5):
        assert t.arrived(URGENT, bytes([i]), 12.0)
    assert t.owed(MAIN) + t.owed(URGENT) <= 3


def test_an_old_expired_entry_does_not_take_a_younger_ones_place() -> None:
    t = both_up()
    t.window_s = 10.0
    assert t.arrived(URGENT, b"k", 0.0)
    assert not t.arrived(MAIN, b"k", 1.0)  # paired
    assert t.arrived(URGENT, b"k", 9.0)  # a second k, its main twin owed from 9.0
    # At 10.5 the first entry expires; the owed copy from 9.0 must stay owed.
    assert not t.arrived(MAIN, b"k", 10.5)


def test_fingerprint_tells_apart_what_a_client_can_vary() -> None:
    base = ("c/cmd/al/estop", b"{}", b"c1", "c/replies/al/x", (("client_id", "a"),))
    same = fingerprint(*base)
    assert fingerprint(*base) == same
    for i, alt in enumerate(("c/cmd/bo/estop", b"{ }", b"c2", "c/replies/al/y", ())):
        changed = list(base)
        changed[i] = alt
        assert fingerprint(*changed) != same  # type: ignore[arg-type]
    assert fingerprint(base[0], base[1], None, None, ()) != fingerprint(
        base[0], base[1], b"", None, ()
    )
