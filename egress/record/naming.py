"""Record ids named when the gateway decides, so that a deny reason (the HTTP 403 body, the DNS Extended Error text)
can name the record a harness fetches (``GET /v1/attempts/{id}``) before the recorder has written it.

The id is a pure function of the attempt: its aggregation key (`egress.record.aggregate.aggregate_key`), the
second it falls in, and this process (a secret drawn at start and the PID, so ids are not predictable and two
processes never name the same one). Every repeat of an attempt within that second gets the same id, the id of the
record they are aggregated into (the recorder follows these ids, `Aggregator.add` with ``named``): no state is
shared between the decision and the recorder's thread. The id's time is the start of that second (a record's
``ts``, its first attempt, is at most a second later), which is where `egress.record.query.get_attempt` looks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Final

from egress.decisions import DecidedFlow
from egress.detect.base import Transport
from egress.record.aggregate import AggregateKey
from egress.record.schema import ID_RANDOM_BYTES, make_id

BUCKET: Final = 1.0
"""Seconds whose repeats of one attempt share a record (and so an id)."""
_SECRET: Final = os.urandom(16)


def flow_key(flow: DecidedFlow) -> AggregateKey:
    """`aggregate_key` of the record `AttemptRecord.of` makes of ``flow`` (without making it)."""
    verdict, finding = flow.verdict, flow.verdict.finding
    assert verdict.reason is not None, "an allowed flow has no record"
    protocol = (flow.protocol or flow.transport) if finding is None else finding.protocol
    transport = Transport(flow.transport)
    return (flow.sandbox, flow.src, flow.dst, flow.dport, transport, flow.host, verdict.reason, protocol)


def decision_id(flow: DecidedFlow) -> str:
    """The id of the record ``flow`` (a block, would-block or record) is part of."""
    second = math.floor(flow.ts / BUCKET)
    material = repr((flow_key(flow), second, os.getpid())).encode()
    digest = hashlib.blake2b(material, key=_SECRET, digest_size=ID_RANDOM_BYTES).digest()
    return make_id(second * BUCKET, digest)


def named(flow: DecidedFlow) -> DecidedFlow:
    """``flow`` with its record's id (`decision_id`) when it is worth a record; an allowed one as it is."""
    if not flow.verdict.recorded or flow.verdict.reason is None or flow.record_id:
        return flow
    return dataclasses.replace(flow, record_id=decision_id(flow))
