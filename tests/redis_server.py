"""Real redis-server processes for the tests (and bench/records.py), each provably the test's own.

A server listens on a unix socket in a fresh directory of its own (prefix ``egt-redis-``), where nothing else can
be listening; a Cluster node (which needs TCP for its bus) listens on a free loopback port instead, and is then
only taken as ours once ``INFO``'s ``process_id`` is the PID we started: a port another Redis holds is never
mistaken for ours. Data is persisted in an AOF that Redis writes before it answers each command, so a SIGKILLed
server restarts with every write it acknowledged (the kernel holds them). The AOF is never fsynced: that guards
only against the machine itself crashing, which no test does, and costs milliseconds per write.
`RedisFactory` starts servers and Clusters and stops them all (by their own PIDs) at the end; the conftest hands one
factory to each test module that asks for Redis. A Cluster of masters comes from `ClusterSpares` when the factory
has one (the conftest's: one per test process): started ahead, so that Redis's 2 s before a new master accepts
writes passes while other tests run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from egress.lab import servers
from tests.ports import free_port
from tests.sockio import recv_at_least, recv_until
from tests.waiting import eventually, scaled

REDIS_SERVER: Final = shutil.which("redis-server")
REDIS_CLI: Final = shutil.which("redis-cli")
START_TIMEOUT: Final = 15.0
SOCKET_NAME: Final = "redis.sock"
_CLOSED: Final = "redis closed the connection"


def _command(sock: socket.socket, *words: str) -> bytes:
    """Send one command and read one bulk or simple reply (enough for PING and INFO)."""
    sock.sendall(f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words))
    head, _, rest = recv_until(sock, b"\r\n", closed=_CLOSED).partition(b"\r\n")
    if head[:1] != b"$":
        return head
    size = int(head[1:])
    return recv_at_least(sock, size + 2, rest, closed=_CLOSED)[:size]


FAILOVER_NODE_TIMEOUT_MS = 3000
"""A Cluster node with replicas is judged failed after this long without answering (long enough that a loaded
machine does not fail a node over by mistake, short enough for a failover test)."""


class PortTaken(RuntimeError):
    """Something else listens on the port we chose."""


class RedisServer:
    """One redis-server: on a unix socket (default), or on a loopback port (``tcp``/``cluster``). `kill` (SIGKILL),
    `pause`/`resume` (SIGSTOP/SIGCONT) and `start` again keep the address and the data directory."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        tcp: bool = False,
        cluster: bool = False,
        port: int | None = None,
        node_timeout_ms: int | None = None,
        password: str | None = None,
        config_file: Path | None = None,
    ) -> None:
        """``password``: the server's ``requirepass``, which its `url` and probes carry; with ``config_file`` (a
        file the server reads, as redis.conf's ``include`` would: ``--include``) it is only what the client gives,
        the file setting the server's."""
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.directory = directory or Path(tempfile.mkdtemp(prefix="egt-redis-"))
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self.tcp = tcp or cluster or port is not None
        self._port_chosen = self.tcp and port is None
        self.port = (port or free_port(cluster_bus=cluster)) if self.tcp else 0
        self.password = password
        self.config_file = config_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    @property
    def url(self) -> str:
        secret = f":{self.password}@" if self.password else ""
        if self.tcp:
            return f"redis://{secret}127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0" + (f"&password={self.password}" if self.password else "")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def _connect(self) -> socket.socket:
        timeout = scaled(2.0)
        if self.tcp:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        return sock

    def info_pid(self) -> int | None:
        """The ``process_id`` of whatever Redis answers at our address, or None when nothing answers."""
        try:
            with self._connect() as sock:
                if self.password:
                    _command(sock, "AUTH", self.password)
                info = _command(sock, "INFO", "server").decode(errors="replace")
        except (OSError, ValueError):
            return None
        for line in info.splitlines():
            if line.startswith("process_id:"):
                return int(line.partition(":")[2])
        return None

    def _ours(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self._log()
            error = PortTaken if "Address already in use" in log else RuntimeError
            raise error(f"redis-server exited with {self.process.returncode}:\n{log}")
        answered = self.info_pid()
        assert answered is not None, f"redis-server (pid {self.process.pid}) does not answer at {self.url} yet"
        if answered != self.process.pid:
            raise PortTaken(f"{self.url} is answered by another Redis (pid {answered}), not ours")
        return True

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        return ""

    def start(self) -> RedisServer:
        """Start and wait until the server at our address is this process; a port we chose that turned out taken
        is swapped for another (a few times)."""
        for _ in range(4):
            try:
                return self._start()
            except PortTaken:
                if not self._port_chosen:
                    raise
                self.port = free_port(cluster_bus=self.cluster)
        return self._start()

    def _start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        if self.tcp:
            listen = ["--bind", "127.0.0.1", "--port", str(self.port)]
        else:
            listen = ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        command = [
            REDIS_SERVER,
            *listen,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "no",  # written before the reply (survives SIGKILL); no fsync (see the docstring)
            "--logfile", str(self.directory / "redis.log"),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.password and self.config_file is None:
            command += ["--requirepass", self.password]
        if self.config_file is not None:
            command += ["--include", str(self.config_file)]
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            if self.node_timeout_ms is not None:
                # A replica may always take over (validity factor 0): the test kills masters on purpose, and
                # Redis would otherwise refuse when the replica's last word from its master looks old.
                command += [
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--cluster-replica-validity-factor",
                    "0",
                ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            eventually(self._ours, timeout=START_TIMEOUT, interval=0.02)
        except BaseException:
            self.stop()
            raise
        self._port_chosen = False  # a restart keeps its address (a Cluster node's peers know it by it)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=scaled(10))
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server hears nothing until `resume` (what the kernel receives waits in its buffers)."""
        os.kill(self.pid, signal.SIGSTOP)
        eventually(lambda: self._state() == "T", timeout=5, interval=0.005)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _state(self) -> str:
        """The process state letter from /proc (``T`` once stopped)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0]

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            servers.stop(self.process, scaled(10))
        self.process = None

    def cleanup(self) -> None:
        """Gone for good, data and all: SIGKILL (a SIGTERM waits up to 0.1 s for Redis's next timer tick to act on
        it, for data that is deleted next: ~0.1 s of every test that had a server of its own)."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def command(self, *words: str) -> str:
        """One command over a fresh connection (no ``redis-cli`` process): its simple or bulk reply as text."""
        with self._connect() as sock:
            if self.password:
                _command(sock, "AUTH", self.password)
            return _command(sock, *words).decode(errors="replace")

    def flush(self) -> None:
        """FLUSHALL over a connection of our own: many tests start from an empty server, and a ``redis-cli``
        process for it cost ~10 ms of CPU each (fork and exec from a large test process)."""
        reply = self.command("FLUSHALL")
        if reply != "+OK":
            raise RuntimeError(f"FLUSHALL on {self.url}: {reply}")

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this server; its output."""
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed")
        where = ["-h", "127.0.0.1", "-p", str(self.port)] if self.tcp else ["-s", str(self.socket_path)]
        result = subprocess.run(
            [REDIS_CLI, *where, *args], capture_output=True, text=True, timeout=scaled(30), check=True
        )
        return result.stdout


class RedisFactory:
    """Starts servers and Clusters on demand; `cleanup` stops every one it started (own PIDs) and removes their
    directories."""

    def __init__(self, spares: ClusterSpares | None = None) -> None:
        self._servers: list[RedisServer] = []
        self._spares = spares

    def server(self, *, tcp: bool = False, password: str | None = None, config_file: Path | None = None) -> RedisServer:
        made = RedisServer(tcp=tcp, password=password, config_file=config_file)
        self._servers.append(made)
        return made.start()

    def cluster(self, masters: int = 3, replicas: int = 0) -> list[RedisServer]:
        """``masters`` cluster-enabled servers joined into one Cluster, each with ``replicas`` replicas (the masters
        first in the list), state ``ok`` when returned. With replicas, a node is judged failed after
        `FAILOVER_NODE_TIMEOUT_MS` (Redis's default is 15 s), so a failover test does not wait a quarter minute."""
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed")
        if not replicas and self._spares is not None and masters == self._spares.masters:
            nodes = self._spares.take()
            self._servers.extend(nodes)
            _wait_joined(nodes)
            return nodes
        nodes = []
        for _ in range(masters * (1 + replicas)):
            node = RedisServer(cluster=True, node_timeout_ms=FAILOVER_NODE_TIMEOUT_MS if replicas else None)
            self._servers.append(node)
            nodes.append(node.start())
        if not replicas:
            _join_masters(nodes)
            _wait_joined(nodes)
            return nodes
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True,
            timeout=scaled(60),
            check=True,
        )
        eventually(lambda: all(cluster_ok(node) for node in nodes), timeout=30, interval=0.1)
        # Every replica has its master's data (the initial sync done), as on a Cluster that has been running.
        eventually(lambda: all(replica_synced(node) for node in nodes), timeout=scaled(60), interval=0.1)
        return nodes

    def own(self) -> Iterator[RedisServer]:
        """A server of one test's own, discarded when it ends (for a fixture: ``yield from redis_factory.own()``):
        for tests that kill, pause or restart it, or must see only their own keys."""
        instance = self.server()
        try:
            yield instance
        finally:
            self.discard(instance)

    def discard(self, *gone: RedisServer) -> None:
        """Stop and remove these servers now (a test that wants a fresh one each time)."""
        for server in gone:
            server.cleanup()
            self._servers.remove(server)

    def cleanup(self) -> None:
        while self._servers:
            self._servers.pop().cleanup()


class ClusterSpares:
    """The next Cluster of masters, started and joined before a test asks for it (one per test process).

    A Redis Cluster master refuses to turn its state ``ok`` until 2 s after it started (Redis's
    ``CLUSTER_WRITABLE_DELAY``: a rebooted master gives its peers time to reconfigure it first), so every Cluster a
    test built cost it 2 s of waiting. Here that wait passes while other tests run: `take` hands over the Cluster
    started earlier (each test still gets a fresh Cluster of its own, never one another test used) and starts the
    next one at once. The nodes are joined right after they start, inside those 2 s: a node left alone longer
    counts itself in a minority and then waits a further ``cluster-node-timeout`` (capped at 5 s) after joining.
    `cleanup` stops the one nobody took (by its PIDs)."""

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self._next: list[RedisServer] = []

    def prepare(self) -> None:
        """Start the next Cluster now if none is on its way (cheap: a few redis-server processes, no waiting)."""
        if not self._next:
            self._next = _started_masters(self.masters)

    def take(self) -> list[RedisServer]:
        """The Cluster started earlier (joined, maybe not ``ok`` yet), now the caller's to stop; the next one starts."""
        self.prepare()
        taken, self._next = self._next, []
        self.prepare()
        return taken

    def cleanup(self) -> None:
        while self._next:
            self._next.pop().cleanup()


def _started_masters(count: int) -> list[RedisServer]:
    nodes: list[RedisServer] = []
    try:
        for _ in range(count):
            nodes.append(RedisServer(cluster=True).start())
        _join_masters(nodes)
    except BaseException:
        for node in nodes:
            node.cleanup()
        raise
    return nodes


def _join_masters(nodes: list[RedisServer]) -> None:
    """Make ``nodes`` one Cluster of masters, each with an even share of the slots (`_wait_joined` waits for state
    ``ok``).

    What ``redis-cli --cluster create`` does without replicas, minus its one-second polls: each node takes its
    slots and a distinct config epoch, and each meets every other (no waiting for gossip to spread them)."""
    share = CLUSTER_SLOTS // len(nodes)
    for index, node in enumerate(nodes):
        last = CLUSTER_SLOTS - 1 if index == len(nodes) - 1 else (index + 1) * share - 1
        _ok(node, "CLUSTER", "ADDSLOTSRANGE", str(index * share), str(last))
        _ok(node, "CLUSTER", "SET-CONFIG-EPOCH", str(index + 1))
    for index, node in enumerate(nodes):
        for other in nodes[index + 1 :]:
            _ok(node, "CLUSTER", "MEET", "127.0.0.1", str(other.port))


def _wait_joined(nodes: list[RedisServer]) -> None:
    """Until every node of a Cluster of masters says state ``ok`` and knows every master with its slots."""
    eventually(lambda: all(_knows_all(node, len(nodes)) for node in nodes), timeout=scaled(30), interval=0.02)


def _ok(node: RedisServer, *words: str) -> None:
    reply = node.command(*words)
    if reply != "+OK":
        raise RuntimeError(f"{' '.join(words)} on {node.url}: {reply}")


def _knows_all(node: RedisServer, count: int) -> bool:
    """Cluster state ``ok`` and every node known as a master that holds slots (the slot map is complete here)."""
    if "cluster_state:ok" not in node.command("CLUSTER", "INFO"):
        return False
    rows = [line.split() for line in node.command("CLUSTER", "NODES").splitlines()]
    masters = [row for row in rows if "master" in row[2].split(",") and row[7] == "connected"]
    return len(masters) == count and all(len(row) > 8 for row in masters)


CLUSTER_SLOTS: Final = 16384


def replica_synced(node: RedisServer) -> bool:
    """A master, or a replica whose link to its master is up and not loading."""
    info = node.command("INFO", "replication")
    return "role:master" in info or ("master_link_status:up" in info and "master_sync_in_progress:0" in info)


def cluster_ok(node: RedisServer) -> bool:
    try:
        return "cluster_state:ok" in node.command("CLUSTER", "INFO")
    except OSError:
        return False  # not listening yet (restarting): not ok


def nowhere_url() -> str:
    """A Redis URL where nothing listens, for certain: a unix socket in a directory that does not exist."""
    return f"unix://{tempfile.gettempdir()}/egt-redis-nowhere-{os.getpid()}/absent/{SOCKET_NAME}?db=0"
