"""The control channel between the supervisor and one proxy worker: how a worker gets its policy, the only way.

A Unix socket pair made by the supervisor; the worker inherits its end (``--control FD``). The supervisor sends
requests, the worker answers each in order:

- ``PREPARE`` carries the validated `PolicyVersion` itself (pickled once per reload and sent to every worker: the
  worker unpickles it in a thread, which is several times cheaper than parsing the YAML again, and can never see a
  file that changed in between); the worker keeps it aside and answers with its digest, or refuses;
- ``COMMIT`` swaps the prepared version in; the worker answers with the digest it now runs and logs it;
- ``ABORT`` drops the prepared version; ``STATUS`` asks for the digest in force (the supervisor's liveness ping:
  a worker that stops answering it is hung, see `egress.gateway.workers`); its answer also carries the worker's
  own counts, which the supervisor serves as metrics (`egress.gateway.metrics`);
- ``CUT`` (the lockdown: a component is down) carries the reason; the worker aborts every connection it has open
  (`egress.proxy.openflows.OpenFlows.cut_all`: a reset, nothing more of what it holds is sent), logs each, and
  answers with the count. A worker that cannot be told is killed by the supervisor (`egress.gateway.workers`).

Frames: supervisor → worker ``>IBQ`` (body length, kind, sequence number) then the body; worker → supervisor
``>I`` then a JSON reply (at most `MAX_REPLY` bytes) echoing the sequence number, so an answer that arrives after its
request timed out is recognised and skipped. Pickle goes only from the supervisor to the worker: the worker handles
sandbox traffic and is the less trusted side, so what it sends back is plain JSON. When the supervisor's end
closes, the worker stops: a worker that can no longer be told the policy must not go on enforcing a stale one.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import pickle
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from egress.gateway import heap
from egress.gateway.metrics import Snapshot
from egress.gateway.reload import PolicyVersion, Refused
from egress.policy.model import Policy
from egress.record.policy_store import version_label

log = logging.getLogger("egress.proxy")

_REQUEST: Final = struct.Struct(">IBQ")
_LENGTH: Final = struct.Struct(">I")
MAX_REPLY: Final = 64 * 1024


class Kind(enum.IntEnum):
    PREPARE = 1
    COMMIT = 2
    ABORT = 3
    STATUS = 4
    CUT = 5


@dataclass(frozen=True, slots=True)
class Reply:
    seq: int
    ok: bool
    digest: str = ""
    """The digest prepared (PREPARE) or in force (COMMIT, ABORT, STATUS)."""
    reason: str = ""
    """Why not, when ``ok`` is false."""
    stats: dict[str, Any] = field(default_factory=dict)
    """With a ``STATUS`` answer: the worker's own counts (`egress.gateway.metrics.Snapshot`), which the supervisor
    serves on the management side; checked there (`Snapshot.from_json`), the worker being the less trusted side."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end); the worker's end is inheritable, to be passed with ``pass_fds``."""
    supervisor, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.set_inheritable(True)
    return supervisor, worker


async def open_stream(sock: socket.socket | int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over one end (a socket, or the worker's inherited descriptor)."""
    if isinstance(sock, int):
        sock = socket.socket(fileno=sock)
    return await asyncio.open_connection(sock=sock)


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_REPLY:
        raise ValueError(f"a reply of {length} bytes from a worker (at most {MAX_REPLY})")
    fields = json.loads(await reader.readexactly(length))
    stats = fields.get("stats")
    return Reply(
        int(fields["seq"]),
        bool(fields["ok"]),
        str(fields["digest"]),
        str(fields["reason"]),
        stats if isinstance(stats, dict) else {},
    )


class Payloads:
    """Each version pickled once per reload, however many workers it goes to: by the process that validated it
    (`PolicyVersion.payload`), else here in a thread (the version the supervisor booted on)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last: tuple[str, bytes] | None = None

    async def get(self, version: PolicyVersion) -> bytes:
        if version.payload:
            return version.payload
        async with self._lock:
            if self._last is None or self._last[0] != version.digest:
                body = await asyncio.to_thread(pickle.dumps, version, pickle.HIGHEST_PROTOCOL)
                self._last = (version.digest, body)
            return self._last[1]


class WorkerLink:
    """The supervisor's end of one worker's channel: a reload `Participant` named after the worker."""

    def __init__(self, name: str, sock: socket.socket, payloads: Payloads) -> None:
        self.name = name
        self.sock = sock
        self.payloads = payloads
        self._seq = 0
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.snapshot: Snapshot | None = None
        """The worker's counts from its last ping answer (None until one came)."""
        self.snapshot_at = 0.0
        """When (monotonic seconds)."""

    @property
    def busy(self) -> bool:
        """A request is under way (a reload's, or a ping's): a ping now would wait behind it."""
        return self._lock.locked()

    async def _ask(self, kind: Kind, body: bytes = b"") -> Reply:
        async with self._lock:  # one request at a time, answered in order
            if self._stream is None:
                self._stream = await open_stream(self.sock)
            reader, writer = self._stream
            self._seq += 1
            writer.write(_REQUEST.pack(len(body), kind, self._seq) + body)
            await writer.drain()
            while True:
                reply = await _read_reply(reader)
                if reply.seq == self._seq:
                    return reply  # earlier sequence numbers: answers to requests that timed out

    async def prepare(self, version: PolicyVersion) -> None:
        reply = await self._ask(Kind.PREPARE, await self.payloads.get(version))
        if not reply.ok:
            raise Refused(reply.reason)
        if reply.digest != version.digest:
            raise Refused(f"prepared sha256:{reply.digest[:16]}, not {version.label}")

    async def commit(self, version: PolicyVersion) -> None:
        reply = await self._ask(Kind.COMMIT, version.digest.encode())
        if not reply.ok or reply.digest != version.digest:
            raise RuntimeError(reply.reason or f"runs sha256:{reply.digest[:16]}, not {version.label}")

    async def abort(self, version: PolicyVersion) -> None:
        await self._ask(Kind.ABORT, version.digest.encode())

    async def status(self) -> str:
        """The digest the worker says it runs; its counts are kept (`snapshot`)."""
        reply = await self._ask(Kind.STATUS)
        self.snapshot, self.snapshot_at = Snapshot.from_json(reply.stats), time.monotonic()
        return reply.digest

    async def cut(self, why: str) -> int:
        """Tell the worker to abort every open connection (a lockdown); how many it closed."""
        reply = await self._ask(Kind.CUT, why.encode())
        closed = reply.stats.get("closed")
        if not reply.ok or not isinstance(closed, int):
            raise RuntimeError(reply.reason or f"{self.name} did not say it cut its connections")
        return closed

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
        else:
            self.sock.close()


def _received(body: bytes) -> object:
    """A PREPARE's body unpickled, its policy's lookups built (in the same thread, off the worker's event loop)
    with the collector off, then frozen (egress.gateway.heap: the worker's own loop must not stop for a full
    collection over the policy either)."""
    with heap.building():
        version = pickle.loads(body)
        if isinstance(version, PolicyVersion) and isinstance(version.policy, Policy):
            version.policy.index()
    return version


class WorkerControl:
    """The worker's end, sans-IO: a request in, a reply out; `on_commit` swaps the policy into the worker."""

    def __init__(
        self,
        name: str,
        on_commit: Callable[[PolicyVersion], None] | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
        on_cut: Callable[[str], int] | None = None,
    ) -> None:
        """``stats``: the worker's counts, sent with each ``STATUS`` answer (`egress.gateway.metrics`); ``on_cut``:
        aborts every open connection for the reason given, returns how many (none yet: nothing is open)."""
        self.name = name
        self.on_commit = on_commit
        self.stats = stats
        self.on_cut = on_cut
        self.current: PolicyVersion | None = None
        self.prepared: PolicyVersion | None = None

    def prepare(self, seq: int, version: object) -> Reply:
        if not isinstance(version, PolicyVersion) or not isinstance(version.policy, Policy):
            return Reply(seq, False, reason=f"not a policy version: {type(version).__name__}")
        self.prepared = version
        return Reply(seq, True, version.digest)

    def commit(self, seq: int, digest: str) -> Reply:
        prepared = self.prepared
        if prepared is None or prepared.digest != digest:
            return Reply(seq, False, self._digest(), f"{version_label(digest)} was not prepared")
        self.prepared = None
        if self.on_commit is not None:
            self.on_commit(prepared)
        self.current = prepared
        log.info("%s: policy %s in force", self.name, prepared.label)
        return Reply(seq, True, prepared.digest)

    def abort(self, seq: int, digest: str) -> Reply:
        if self.prepared is not None and self.prepared.digest == digest:
            self.prepared = None
        return Reply(seq, True, self._digest())

    def status(self, seq: int) -> Reply:
        stats = self.stats() if self.stats is not None else {}
        return Reply(seq, self.current is not None, self._digest(), stats=stats)

    def cut(self, seq: int, why: str) -> Reply:
        try:
            closed = self.on_cut(why) if self.on_cut is not None else 0
        except Exception as exc:  # the supervisor kills a worker that could not cut (its sockets then reset)
            log.exception("%s: %s: the open connections could not be cut", self.name, why)
            return Reply(seq, False, self._digest(), f"cut failed: {type(exc).__name__}: {exc}")
        return Reply(seq, True, self._digest(), stats={"closed": closed})  # each close was logged, and the count

    def _digest(self) -> str:
        return self.current.digest if self.current is not None else ""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; ``False`` when the supervisor closed its end."""
        try:
            length, kind, seq = _REQUEST.unpack(await reader.readexactly(_REQUEST.size))
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        match kind:
            case Kind.PREPARE:
                try:
                    version = await asyncio.to_thread(_received, body)  # the supervisor is trusted; see above
                except Exception as exc:  # a version skew between supervisor and worker code
                    reply = Reply(seq, False, reason=f"cannot read the policy: {type(exc).__name__}: {exc}")
                else:
                    reply = self.prepare(seq, version)
            case Kind.COMMIT:
                reply = self.commit(seq, body.decode("ascii", "replace"))
            case Kind.ABORT:
                reply = self.abort(seq, body.decode("ascii", "replace"))
            case Kind.STATUS:
                reply = self.status(seq)
            case Kind.CUT:
                reply = self.cut(seq, body.decode("utf-8", "replace"))
            case _:
                reply = Reply(seq, False, self._digest(), f"unknown request {kind}")
        data = json.dumps(asdict(reply)).encode()
        if len(data) > MAX_REPLY and reply.stats:  # counts must never make a ping fail (the worker would be "hung")
            data = json.dumps(asdict(replace(reply, stats={}))).encode()
        writer.write(_LENGTH.pack(len(data)) + data)
        await writer.drain()
        return True

    async def until_committed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer requests until a first version is in force (a starting worker); ``False`` if the channel closed."""
        while self.current is None:
            if not await self.answer(reader, writer):
                return False
        return True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests until the supervisor closes its end."""
        while await self.answer(reader, writer):
            pass
