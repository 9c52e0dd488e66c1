"""Each sandbox's share of the resolver's UDP: a socket, and so a kernel queue, of its own per sandbox.

With one UDP socket per address the kernel queued every sandbox's datagrams in one receive buffer, in order: a
sandbox that sent faster than the resolver answers kept that buffer full, so another sandbox's query waited behind
seconds of the flood's or was dropped by the kernel before the resolver saw it (red team 7's open gap; the budget
of `egress.dnsserver.fair` is for TCP and cannot help a datagram the kernel never delivered).

`UdpShare` opens, on one address and port, a socket for every source outside every sandbox (socket 0: the
liveness probe from 127.0.0.1, unknown and spoofed sources) and one per sandbox that has sources of the address's
family, all in one ``SO_REUSEPORT`` group, and attaches the program `egress.dnsserver.steer.program` compiled from
the policy's source networks, so the kernel queues each datagram in its sandbox's socket. Each socket has its own
receive buffer (`egress.dnsserver.listen.RECEIVE_BUFFER`) and its own drop counter: a flood fills and overflows its
own queue only, and what the kernel drops there is recorded as ``dns-dropped`` naming that sandbox. The event loop
reads the sockets round-robin (each ready socket's reader runs once per loop turn) and each reads at most
`TURN_BUDGET` datagrams per turn, so another sandbox's query waits at most one turn of the others' budgets.

Fail closed: the sockets' datagrams are all judged by their source address, whichever socket they reached
(`egress.dnsserver.resolver.Resolver.answer_now`), so the steering changes whose queue a datagram waits in, never
what it is answered. At start a socket or a program that cannot be set up is an error (the resolver does not
start: the supervisor refuses to run half-configured); on a reload (`steer`) it is logged and the sandbox's
datagrams share socket 0 (or keep their socket under the program before), still judged. A sandbox a reload
removes has its socket closed (its receive buffer freed, its queued queries unanswered: their clients retry and
reach socket 0 as sources in no sandbox): the kernel then moves the group's last socket into the closed one's place
(``reuseport_detach_sock``), and `slots` does the same before the program is compiled again. Between the close and
the new program a datagram may wait in another sandbox's queue, still judged by its source. A sandbox of the same
name coming back gets a new socket.

Nothing else joins the group: the sockets set ``SO_REUSEPORT`` only, not ``SO_REUSEADDR``, with which any process
of the namespace, of any user, could bind the same port with ``SO_REUSEADDR`` and, bound last, receive every
datagram the group would (the kernel's UDP lookup takes the first best-scoring socket that is not in a group). A
socket that joins the group needs ``SO_REUSEPORT`` and the group's user (the kernel compares the effective uid):
another root process of the gateway's namespace can still join, at an index past the group's sockets that the
program never returns, until a reload opens a socket after it (docs/dns-performance.md, "udpfair").
"""

from __future__ import annotations

import logging
from typing import Final

from egress.dnsserver import steer
from egress.dnsserver.listen import RECEIVE_BUFFER, UdpServer, attach_steering, open_udp
from egress.dnsserver.resolver import Resolver
from egress.policy.model import Policy

log = logging.getLogger(__name__)

TURN_BUDGET: Final = 64
"""Datagrams one socket reads per loop turn at most (~20 ms of refusals on the loaded machine, ~3 ms of answers
from the fast path): what one sandbox's flood costs another sandbox's query per turn."""
OUTSIDE: Final = ""
"""Socket 0's label: sources in no sandbox (and the sandboxes a program could not steer)."""


class UdpShare:
    """The resolver's UDP sockets on one address and port, one per sandbox (see the module docstring)."""

    def __init__(
        self,
        resolver: Resolver,
        host: str,
        port: int,
        budget: int = TURN_BUDGET,
        buffer: int = RECEIVE_BUFFER,
    ) -> None:
        self.resolver = resolver
        self.host = host
        self.version = 6 if ":" in host else 4
        self.budget = budget
        self.buffer = buffer
        self.servers: dict[str, UdpServer] = {}
        """By sandbox name (`OUTSIDE`: socket 0)."""
        self.slots: list[str] = []
        """The sockets' order in the kernel's group: a program's index ``i`` reaches ``slots[i]``'s socket."""
        self.left: list[str] = []
        """Sandboxes the program in force does not steer (their datagrams reach socket 0)."""
        self.port = port
        try:
            self._open(OUTSIDE)
            self.port = self.servers[OUTSIDE].sock.getsockname()[1]  # port 0: the rest join the port it got
            self._steer(resolver.policy, starting=True)
        except BaseException:
            self.close()
            raise
        resolver.reloaded.append(self.steer)

    def _open(self, sandbox: str) -> None:
        sock, size = open_udp(self.host, self.port, self.buffer)
        self.slots.append(sandbox)  # bound: the kernel appended it to the group
        self.servers[sandbox] = UdpServer(self.resolver, sock, sandbox=sandbox, budget=self.budget)
        log.info(
            "resolver UDP %s:%d receive buffer %d bytes (%s)", self.host, self.port, size, sandbox or "other sources"
        )

    def steer(self, policy: Policy) -> None:
        """The policy in force changed (a reload): a socket for each new sandbox, and the program compiled again."""
        try:
            self._steer(policy, starting=False)
        except (OSError, ValueError) as exc:  # the program before stays: queues shared or stale, answers judged
            log.error("resolver UDP %s:%d: sandboxes not steered to their own sockets: %s", self.host, self.port, exc)

    def _close_removed(self, policy: Policy) -> None:
        """Close the socket of each sandbox ``policy`` no longer steers (gone, or without sources of this family);
        the kernel moves the group's last socket into its place, and so does `slots`."""
        steered = {s.name for s in policy.sandboxes if any(n.version == self.version for n in s.sources)}
        for name in [name for name in self.slots if name != OUTSIDE and name not in steered]:
            index = self.slots.index(name)
            self.servers.pop(name).close()
            self.slots[index] = self.slots[-1]
            self.slots.pop()
            log.info("resolver UDP %s:%d: socket of removed sandbox %s closed", self.host, self.port, name)

    def _steer(self, policy: Policy, *, starting: bool) -> None:
        if not starting:
            self._close_removed(policy)
        routes: list[tuple[int, steer.Network]] = []
        for sandbox in policy.sandboxes:
            sources = [network for network in sandbox.sources if network.version == self.version]
            if not sources:
                continue
            if sandbox.name not in self.servers:
                try:
                    self._open(sandbox.name)
                except OSError as exc:
                    if starting:
                        raise
                    log.error("resolver UDP %s:%d: no socket for sandbox %s (%s): its queries share the socket of "
                              "other sources", self.host, self.port, sandbox.name, exc)  # fmt: skip
                    continue
            routes.extend((self.slots.index(sandbox.name), network) for network in sources)
        insns, left = steer.program(routes, self.version)
        attach_steering(self.servers[OUTSIDE].sock, steer.encode(insns))
        self.left = sorted({self.slots[index] for index, _network in left})
        if self.left:
            shared = ", ".join(self.left)
            log.warning("resolver UDP %s:%d: the program holds %d instructions at most; sandboxes %s share the "
                        "socket of other sources", self.host, self.port, steer.MAX_INSNS, shared)  # fmt: skip

    def pause(self) -> None:
        """Stop reading every socket (kept open: queries queue up unanswered), as a stuck resolver would."""
        for server in self.servers.values():
            server.pause()

    def get_extra_info(self, name: str) -> object:
        """As asyncio transports do: ``sockname`` is the bound address."""
        return self.servers[OUTSIDE].get_extra_info(name) if OUTSIDE in self.servers else None

    @property
    def received(self) -> int:
        return sum(server.received for server in self.servers.values())

    def close(self) -> None:
        if self.steer in self.resolver.reloaded:
            self.resolver.reloaded.remove(self.steer)
        for server in self.servers.values():
            server.close()
