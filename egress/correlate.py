"""Ties blocked attempts to the agent actions that caused them. Pure: records in, links out.

The rule (docs/records.md), containment wins: an attempt inside the span of one or more actions of its sandbox
belongs to those actions only, innermost first; an attempt inside no span belongs to the nearest action(s) whose
span, widened by ``slack`` seconds, reaches it. An action still running (``end`` None) spans to +inf. The links are
made when asked, not when written, because the harness may report an action after the attempts it explains.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from egress.record.actions import ActionRecord
from egress.record.schema import AttemptRecord

DEFAULT_SLACK: Final = 2.0
"""Seconds: clocks of the harness and the gateway differ, and a connection may start just after its command."""


def distance(attempt_ts: float, action: ActionRecord) -> float:
    """Seconds from ``attempt_ts`` to the action's span: 0 inside it, else the gap to its nearer edge."""
    if attempt_ts < action.start:
        return action.start - attempt_ts
    if attempt_ts > action.span_end:
        return attempt_ts - action.span_end
    return 0.0


def correlate(
    attempt_ts: float, actions: Sequence[ActionRecord], slack: float = DEFAULT_SLACK
) -> list[tuple[ActionRecord, float]]:
    """The actions ``attempt_ts`` belongs to, each with its `distance` in seconds.

    Containment wins: if any span contains the attempt, exactly the containing actions, innermost first (the one
    that started later, then the one that ends sooner: the likelier cause). Otherwise the action(s) nearest to the
    attempt, if within ``slack``; several only when they are equally near."""
    if not math.isfinite(slack) or slack < 0:
        raise ValueError(f"slack must be a non-negative number of seconds, got {slack!r}")
    gaps = [(action, distance(attempt_ts, action)) for action in actions]
    nearest = min((gap for _, gap in gaps), default=math.inf)
    if nearest > slack:
        return []
    found = [(action, gap) for action, gap in gaps if gap == nearest]
    found.sort(key=lambda pair: (-pair[0].start, pair[0].span_end, pair[0].id))
    return found


_MARGIN: Final = 1e-6
"""Seconds added to the candidate window so that float rounding cannot drop an action right on its edge."""


class Correlator:
    """`correlate` for many attempts against the same actions: sorted once, each look-up reads only the actions
    that started within the longest finished span before the attempt (plus those still running)."""

    def __init__(self, actions: Sequence[ActionRecord], slack: float = DEFAULT_SLACK) -> None:
        if not math.isfinite(slack) or slack < 0:
            raise ValueError(f"slack must be a non-negative number of seconds, got {slack!r}")
        self.slack = slack
        finished = sorted((a for a in actions if a.end is not None), key=lambda a: a.start)
        self._finished = finished
        self._starts = [action.start for action in finished]
        self._longest = max((action.span_end - action.start for action in finished), default=0.0)
        self._running = [action for action in actions if action.end is None]

    def links(self, attempt_ts: float) -> list[tuple[ActionRecord, float]]:
        """Same answer as ``correlate(attempt_ts, actions, slack)``."""
        low = bisect.bisect_left(self._starts, attempt_ts - self.slack - self._longest - _MARGIN)
        high = bisect.bisect_right(self._starts, attempt_ts + self.slack + _MARGIN)
        if low >= high and not self._running:
            return []  # no candidate (most attempts of a timeline): no list to build, nothing to sort
        return correlate(attempt_ts, [*self._finished[low:high], *self._running], self.slack)


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One line of a sandbox timeline: an action (at its start) or an attempt (at its time)."""

    kind: Literal["action", "attempt"]
    ts: float
    action: ActionRecord | None = None
    """Set when ``kind`` is ``action``."""
    attempt: AttemptRecord | None = None
    """Set when ``kind`` is ``attempt``."""
    related: tuple[str, ...] = ()
    """For an attempt: ids of the actions it belongs to (`correlate` with the slack given), innermost first."""


def timeline(
    actions: Sequence[ActionRecord], attempts: Sequence[AttemptRecord], slack: float = DEFAULT_SLACK
) -> list[TimelineItem]:
    """Actions and attempts merged by time, oldest first; at equal times an action comes before an attempt (the
    action is the cause). Each attempt carries the ids of its correlated actions in ``related``."""
    return [
        TimelineItem("action", ts, action=action)
        if action is not None
        else TimelineItem("attempt", ts, attempt=attempt, related=related)
        for ts, action, attempt, related in timeline_rows(actions, attempts, slack)
    ]


TimelineRow = tuple[float, ActionRecord | None, AttemptRecord | None, tuple[str, ...]]
"""(time, the action or None, the attempt or None, the attempt's related action ids): a `TimelineItem` unbuilt."""


def timeline_rows(
    actions: Sequence[ActionRecord], attempts: Sequence[AttemptRecord], slack: float = DEFAULT_SLACK
) -> list[TimelineRow]:
    """`timeline` as plain tuples, for the API, which answers hundreds of lines per request: building a frozen
    dataclass per line was most of what the merge cost."""
    index = Correlator(actions, slack)
    keyed: list[tuple[float, int, str, TimelineRow]] = [
        (action.start, 0, action.id, (action.start, action, None, ())) for action in actions
    ]
    links = index.links
    keyed += [
        (attempt.ts, 1, attempt.id, (attempt.ts, None, attempt, tuple(action.id for action, _ in links(attempt.ts))))
        for attempt in attempts
    ]
    keyed.sort(key=_ORDER)
    return [row for *_, row in keyed]


_ORDER: Final = operator.itemgetter(0, 1, 2)
"""(time, 0 for an action / 1 for an attempt, id): an action before an attempt at the same time, the cause first."""
