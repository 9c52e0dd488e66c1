"""SSH's clear opening read from the plaintext sizes of TLS records (`egress.detect.tlsshape`'s ``ssh-in-tls`` at
the opening): two readings, one that needs SSH's packets one per record and one that does not care how the bytes
are cut into records.

SSH's opening (RFC 4253): the client's identification line (at most 255 bytes, §4.2) and KEXINIT, the key
exchange's first message, then NEWKEYS and the first encrypted packet, SERVICE_REQUEST (§10); a binary packet in
the clear is a multiple of 8 bytes (§6). From the key exchange on the two sides take turns (lockstep): the client's
key exchange message only after the server's KEXINIT, the server's reply (host key, signature; with NEWKEYS, and
OpenSSH's EXT_INFO) only after it, the client's NEWKEYS and SERVICE_REQUEST only after the reply, the server's
SERVICE_ACCEPT only after those. A relay sees the records in that causal order, whatever the clock.

- `by_record` (one packet per record): client records identification, KEXINIT, key exchange, NEWKEYS (16 bytes
  with the minimal padding every common implementation uses) and a first encrypted packet of 0 mod 4 bytes, or
  NEWKEYS and that packet read together. Decided on the record of the first encrypted packet (not forwarded: the
  server never gets an encrypted packet). Random sizes meet it about once in 150,000 connections.
- `by_turns` (any cutting): the sums of the last turns, each a burst (consecutive records of one direction; in
  lockstep a turn is one burst however its bytes were cut or coalesced): the client's key exchange turn (its
  KEXINIT, or its tail, may ride with it) is 0 mod 8 bytes, or ends 0 mod 8 from where an earlier client turn
  ended within an identification's length; the server's reply turn at least a reply and NEWKEYS; the client's
  next turn NEWKEYS and one encrypted SERVICE_REQUEST, ``16 + X`` with X 0 mod 4 in [40, 100] (its payload is
  17 bytes: X is 44 with chacha20-poly1305, 52 aes-gcm, 64 aes-ctr with hmac-sha2-256, 100 the largest, with an
  -etm hmac-sha2-512), and the server's answer, SERVICE_ACCEPT, whose payload is the same 17 bytes under the same
  cipher: exactly X. Decided on the record that completes those X bytes (not forwarded: the client never gets
  the SERVICE_ACCEPT, so no user authentication starts); the turns must open the connection (at most
  `OPENING_TURNS` client turns before the key exchange turn, after at least an identification and a KEXINIT
  each way). Random sizes meet it about once in 100,000-200,000 connections, as they meet `by_record`
  (measured, 200,000 each: records of random direction with a quarter under 64 bytes, 1; strictly alternating
  turns of log-uniform sizes from 8 bytes to 16 KiB, 2 to 5; every connection of the benign corpora and the 19
  recorded HTTPS sessions, 0: tests/detect/test_sshopening.py, test_tlsshape.py).

What stays out of reach (docs/security.md, "What cannot be told apart"): padding (TLS 1.3 record padding, RFC
8446 §5.4, or SSH_MSG_IGNORE packets in the turns), a wrapper that holds bytes back across the peer's turns, or
ciphers that differ per direction (the SERVICE_ACCEPT then differs from the request): the turns' sums no longer
read as SSH's; and TLS 1.2 CBC suites, whose padding hides every size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from egress.detect.base import Category, Finding, evidence

if TYPE_CHECKING:
    from egress.detect.tlsshape import Record

NAME = "tlsshape"

IDENT_MIN, IDENT_MAX, KEXINIT_MIN, KEX_MIN, REPLY_MIN, NEWKEYS = 8, 255, 256, 40, 128, 16
"""Bytes: identification line bounds (§4.2); a KEXINIT (its name-lists make it hundreds); the key exchange's first
message (curve25519: 48); the server's reply (host key and signature); NEWKEYS with the minimal padding."""
SERVICE_MIN, SERVICE_MAX = 40, 100
"""An encrypted SERVICE_REQUEST/SERVICE_ACCEPT ("ssh-userauth", 17 bytes of payload): 40 with aes-ctr and
umac-64, 100 with an encrypt-then-MAC hmac-sha2-512 (a 64-byte tag)."""
OPENING_TURNS: Final = 4
"""Client turns before its key exchange turn: the identification and KEXINIT, cut apart by the server's own
identification, KEXINIT and (TLS 1.3) session tickets arriving between them."""


def by_record(records: Sequence[Record]) -> Finding | None:
    """SSH's opening one packet per record, decided on the client's record that carries its first encrypted
    packet: the fifth (after NEWKEYS alone) or the fourth (NEWKEYS and the next packet read together)."""
    client = [record.size for record in records if record.from_client]
    if len(client) not in (4, 5) or not records[-1].from_client:
        return None
    banner, kexinit, kex, newkeys = client[:4]
    if len(client) == 5:
        switched = newkeys == NEWKEYS and client[4] % 4 == 0
    else:
        switched = newkeys % 4 == 0 and NEWKEYS + 32 <= newkeys <= NEWKEYS + 144
    clear = kexinit >= KEXINIT_MIN and kexinit % 8 == 0 and kex >= KEX_MIN and kex % 8 == 0
    third = [index for index, record in enumerate(records) if record.from_client][2]
    server = any(not r.from_client and r.size >= KEXINIT_MIN and r.size % 8 == 0 for r in records[:third])
    server = server and any(not r.from_client and r.size >= REPLY_MIN for r in records[third:])
    if not (IDENT_MIN <= banner <= IDENT_MAX and clear and switched and server):
        return None
    text = f"client records {client}: identification, KEXINIT, key exchange, NEWKEYS, then encrypted"
    return Finding(Category.TUNNEL, "ssh-in-tls", NAME, evidence(text))


def add_turn(turns: list[tuple[bool, int]], record: Record) -> None:
    """Extend ``turns`` (from client, plaintext bytes) of each burst, consecutive records of one direction."""
    if turns and turns[-1][0] == record.from_client:
        turns[-1] = (record.from_client, turns[-1][1] + record.size)
    else:
        turns.append((record.from_client, record.size))


OPENING_BURSTS: Final = 2 * OPENING_TURNS + 4
"""Bursts past which `by_turns` has nothing left to find: the key exchange turn came after at most
`OPENING_TURNS` client turns and the server's answer to the SERVICE_REQUEST is the fourth burst from it."""


OPENING_BYTES: Final = 32 * 1024
"""Plaintext bytes of both sides up to the SERVICE_ACCEPT: identifications, KEXINITs, key exchange and reply with
the largest common keys and groups (sntrup761, ML-KEM, 8192-bit DH with an RSA host key) come to under 12 KiB."""


def by_turns(turns: Sequence[tuple[bool, int]]) -> Finding | None:
    """SSH's opening read from the sums of its turns (``turns`` up to the record just read, which is the
    server's), decided on the server's record that completes a SERVICE_ACCEPT of exactly the size of the
    client's SERVICE_REQUEST (see the module docstring)."""
    if len(turns) < 4 or len(turns) > OPENING_BURSTS or turns[-1][0]:
        return None
    (c1, kex), (s1, reply), (c2, switch), (_, accept) = turns[-4:]
    service = switch - NEWKEYS
    if not (c1 and not s1 and c2) or accept != service or service % 4 or not SERVICE_MIN <= service <= SERVICE_MAX:
        return None
    if kex < KEX_MIN or reply < REPLY_MIN + NEWKEYS:
        return None
    before = turns[:-4]
    if sum(1 for side, _ in before if side) > OPENING_TURNS:
        return None
    client = sum(size for side, size in before if side) + kex
    if kex % 8 and not any((client - end) % 8 == 0 for end in _ident_ends(before)):
        return None  # the clear packets end where the key exchange turn does: 0 mod 8 from the turn or the ident
    server = sum(size for side, size in before if not side)
    if client < IDENT_MIN + KEXINIT_MIN + KEX_MIN or server < IDENT_MIN + KEXINIT_MIN:
        return None
    text = (
        f"turns {[size for _, size in turns[-4:]]}: key exchange, reply, NEWKEYS + SERVICE_REQUEST ({service}), "
        "SERVICE_ACCEPT of the same size"
    )
    return Finding(Category.TUNNEL, "ssh-in-tls", NAME, evidence(text))


def _ident_ends(before: Sequence[tuple[bool, int]]) -> list[int]:
    """The client's byte offsets at the end of its turns that could end its identification (at most
    `IDENT_MAX`): the clear packets after it end 0 mod 8 from there, even when the client's KEXINIT was still
    coming in when the server's KEXINIT passed (a wrapper dribbling it in tiny records: its tail then rides
    in the key exchange turn)."""
    ends, total = [], 0
    for from_client, size in before:
        if from_client:
            total += size
            if IDENT_MIN <= total <= IDENT_MAX:
                ends.append(total)
    return ends
