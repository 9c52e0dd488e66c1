"""`egress.gateway.dropcount`: the kernel's drop counters against what the rate-limited log showed (pure)."""

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
    assert counts.reconcile({KEY: 3}, 3.0, never, wall=201.0) == []


def test_what_the_log_left_out_comes_one_read_later_as_one_decision_with_its_count() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 5000}, 2.0, never, wall=200.0) == []  # logs of these may still be on their way
    [extra] = counts.reconcile({KEY: 5000}, 3.0, never, wall=201.0)
    assert (extra.count, extra.ts, extra.protocol, extra.verdict.reason) == (4999, 201.0, "gre", Reason.TUNNEL)
    assert "4999 more not logged" in extra.verdict.evidence
    # counted once: the next reads add only what is new
    assert counts.reconcile({KEY: 5010}, 4.0, never, wall=202.0) == []
    [more] = counts.reconcile({KEY: 5010}, 5.0, never, wall=203.0)
    assert more.count == 10
    assert counts.added == 5009


def test_a_log_that_arrives_after_the_read_is_not_counted_twice() -> None:
    """The read counted 3 packets whose logs the logger had not judged yet: they are judged before the next read
    settles them, so none of them is also reported as unlogged."""
    counts = DropCounts()
    assert counts.reconcile({KEY: 3}, 1.0, never, wall=200.0) == []
    for _ in range(3):
        counts.judged(KEY, flow(), now=1.01)
    assert counts.reconcile({KEY: 3}, 2.0, never, wall=201.0) == []
    assert counts.added == 0


def test_a_key_never_logged_is_decided_from_the_key_alone() -> None:
    counts = DropCounts()
    made: list[CountKey] = []

    def synthesize(key: CountKey) -> DecidedFlow:
        made.append(key)
        return flow()

    counts.reconcile({KEY: 7}, 1.0, synthesize, wall=150.0)
    [extra] = counts.reconcile({KEY: 7}, 2.0, synthesize, wall=151.0)
    assert made == [KEY] and extra.count == 7
    counts.reconcile({KEY: 9}, 3.0, never, wall=152.0)
    assert counts.reconcile({KEY: 9}, 4.0, never, wall=153.0)[0].count == 2  # the template is kept


def test_a_key_the_synthesizer_refuses_is_not_reported() -> None:
    counts = DropCounts()
    counts.reconcile({KEY: 7}, 1.0, lambda key: None, wall=150.0)
    assert counts.reconcile({KEY: 7}, 2.0, lambda key: None, wall=150.0) == []


def test_a_restarted_counter_counts_from_zero() -> None:
    """An element that expired (or a replaced table) starts again at 0: a lower value is a new counter."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    counts.reconcile({KEY: 10}, 2.0, never, wall=200.0)
    assert counts.reconcile({KEY: 10}, 3.0, never, wall=200.0)[0].count == 9
    counts.judged(KEY, flow(), now=3.0)
    counts.reconcile({KEY: 3}, 4.0, never, wall=201.0)
    [extra] = counts.reconcile({KEY: 3}, 5.0, never, wall=201.0)  # 10 + 3 counted, 2 logged, 9 added
    assert extra.count == 2


def test_a_key_gone_from_the_kernel_is_settled_whole() -> None:
    """Its element expired, or a reload replaced the table: what its last read counted is reported at once."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 40}, 2.0, never, wall=200.0) == []
    [extra] = counts.reconcile({}, 3.0, never, wall=201.0)
    assert extra.count == 39
    assert counts.reconcile({}, 4.0, never, wall=202.0) == []


def test_keys_gone_from_the_kernel_are_forgotten_after_a_while() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    counts.reconcile({}, 2.0, never, wall=200.0)
    assert len(counts) == 1  # just logged: its counter may not be read yet
    counts.reconcile({}, 2.0 + FORGET_AFTER, never, wall=230.0)
    assert len(counts) == 0


def test_the_template_is_restated_under_the_policy_in_force() -> None:
    """A reload renamed the sandbox since the key's last logged packet: the unlogged packets carry the new name."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)

    def renamed(key: CountKey, template: DecidedFlow) -> DecidedFlow:
        assert key == KEY
        return DecidedFlow(
            template.ts, "renamed", template.src, 0, template.dst, 0, "ip", "", template.verdict, template.protocol
        )

    counts.reconcile({KEY: 4}, 2.0, never, wall=200.0, restate=renamed)
    [extra] = counts.reconcile({KEY: 4}, 3.0, never, wall=200.0, restate=renamed)
    assert (extra.sandbox, extra.count) == ("renamed", 3)


def test_dropped_and_let_through_packets_of_one_triple_are_counted_apart() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    passed = (*KEY[:3], True)
    made: list[CountKey] = []

    def synthesize(key: CountKey) -> DecidedFlow:
        made.append(key)
        return flow()

    counts.reconcile({KEY: 1, passed: 6}, 2.0, synthesize, wall=200.0)
    found = counts.reconcile({KEY: 1, passed: 6}, 3.0, synthesize, wall=200.0)
    assert made == [passed] and [d.count for d in found] == [6]


def test_a_stopping_logger_settles_what_the_last_read_counted() -> None:
    counts = DropCounts()
    counts.judged(KEY, flow(), now=1.0)
    assert counts.reconcile({KEY: 12}, 2.0, never, wall=200.0) == []  # one read late...
    [extra] = counts.settle_all(never, wall=201.0)  # ...but no later read comes
    assert extra.count == 11
    assert counts.settle_all(never, wall=202.0) == []
