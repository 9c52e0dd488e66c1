"""`egress.gateway.dropcount`: the kernel's drop counters against what the rate-limited log showed (pure).

Each reading is what the kernel counted since the previous one (`egress.gateway.dropread`); with the log caught up
(the default), a reading is settled as it comes."""

from __future__ import annotations

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway.dropcount import FORGET_AFTER, CountKey, DropCounts

KEY = ("10.0.0.2", 47, "198.51.100.7", False)
VERDICT = Verdict(Enforcement.BLOCK, Reason.TUNNEL, "default-deny", "gre v0 carrying ipv4")


def flow(ts: float = 100.0) -> DecidedFlow:
    return DecidedFlow(ts, "agents", "10.0.0.2", 0, "198.51.100.7", 0, "ip", "", VERDICT, "gre")


def never(key: CountKey) -> DecidedFlow | None:
    raise AssertionError(f"synthesized {key} although a packet of it was logged")


def test_what_was_logged_is_not_counted_again() -> None:
    counts = DropCounts()
    for _ in range(3):
        counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 3}, 2.0, never, wall=200.0) == []
    assert counts.reconcile({}, 3.0, never, wall=201.0) == []


def test_what_the_log_left_out_is_one_decision_with_its_count() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    [extra] = counts.reconcile({KEY: 5000}, 2.0, never, wall=201.0)
    assert (extra.count, extra.ts, extra.protocol, extra.verdict.reason) == (4999, 201.0, "gre", Reason.TUNNEL)
    assert "4999 more not logged" in extra.verdict.evidence
    # counted once: the next readings add only what they bring
    assert counts.reconcile({}, 3.0, never, wall=202.0) == []
    [more] = counts.reconcile({KEY: 10}, 4.0, never, wall=203.0)
    assert more.count == 10
    assert counts.added == 5009


def test_a_log_that_arrives_after_the_read_is_not_counted_twice() -> None:
    """The reading counted 3 packets whose logs the logger had not judged yet: it waits for them (the log caught
    up only to before the packets were counted), so none of them is also reported as unlogged."""
    counts = DropCounts()
    assert counts.reconcile({KEY: 3}, 1.0, never, wall=200.0, logged_through=0.5) == []
    for _ in range(3):
        counts.judged(KEY, flow(), now=1.01)
    assert counts.reconcile({}, 2.0, never, wall=201.0, logged_through=1.5) == []
    assert counts.added == 0


def test_a_key_never_logged_is_decided_from_the_key_alone() -> None:
    counts = DropCounts()
    made: list[CountKey] = []

    def synthesize(key: CountKey) -> DecidedFlow:
        made.append(key)
        return flow()

    [extra] = counts.reconcile({KEY: 7}, 1.0, synthesize, wall=150.0)
    assert made == [KEY] and extra.count == 7
    assert counts.reconcile({KEY: 2}, 2.0, never, wall=152.0)[0].count == 2  # the template is kept


def test_a_key_the_synthesizer_refuses_is_not_reported() -> None:
    counts = DropCounts()
    assert counts.reconcile({KEY: 7}, 1.0, lambda key: None, wall=150.0) == []
    assert counts.reconcile({}, 2.0, lambda key: None, wall=150.0) == []


def test_readings_add_up_whatever_their_order_of_logs_and_counts() -> None:
    """A logged packet's count may come in a later reading than its log: the log already covered it."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 1}, 2.0, never, wall=200.0) == []  # one of the two logged packets' counts
    [extra] = counts.reconcile({KEY: 9}, 3.0, never, wall=201.0)  # the other, and 8 not logged
    assert extra.count == 8


def test_settled_keys_are_forgotten_after_a_while_but_not_before_their_counts_are_read() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    counts.reconcile({}, 0.5 + FORGET_AFTER, never, wall=200.0, counted_by=0.9)  # counted before the packet was
    counts.reconcile({}, 2.0 + FORGET_AFTER, never, wall=200.0, counted_by=0.95)
    assert len(counts) == 1  # logged, but its count is in no reading yet: forgetting it would count it twice
    counts.reconcile({KEY: 1}, 3.0 + FORGET_AFTER, never, wall=230.0, counted_by=1.1)
    assert len(counts) == 1  # just read
    counts.reconcile({}, 4.0 + 2 * FORGET_AFTER, never, wall=230.0)
    assert len(counts) == 0
    assert counts.added == 0


def test_the_template_is_restated_under_the_policy_in_force() -> None:
    """A reload renamed the sandbox since the key's last logged packet: the unlogged packets carry the new name."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)

    def renamed(key: CountKey, template: DecidedFlow) -> DecidedFlow:
        assert key == KEY
        return DecidedFlow(
            template.ts, "renamed", template.src, 0, template.dst, 0, "ip", "", template.verdict, template.protocol
        )

    [extra] = counts.reconcile({KEY: 4}, 2.0, never, wall=200.0, restate=renamed)
    assert (extra.sandbox, extra.count) == ("renamed", 3)


def test_dropped_and_let_through_packets_of_one_triple_are_counted_apart() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    passed = (*KEY[:3], True)
    made: list[CountKey] = []

    def synthesize(key: CountKey) -> DecidedFlow:
        made.append(key)
        return flow()

    found = counts.reconcile({KEY: 1, passed: 6}, 2.0, synthesize, wall=200.0)
    assert made == [passed] and [d.count for d in found] == [6]


def test_a_stopping_logger_settles_what_the_reads_counted() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 12}, 2.0, never, wall=200.0, logged_through=1.5) == []  # the log is behind...
    [extra] = counts.settle_all(never, wall=201.0)  # ...but no later read comes
    assert extra.count == 11
    assert counts.settle_all(never, wall=202.0) == []
