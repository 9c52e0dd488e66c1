"""Red team 7: bytes of a spliced upload that reach the internet after its connection was cut.

The front relays TLS to an allowed name and, once its watch is done, moves the bytes with splice(2) (a 1 MiB pipe
and a thread each for the first 8 directions of a worker, the event loop's callbacks for the others:
egress/proxy/splice.py). An agent uploads without end to a site of its own that stops reading, so the upload
piles up inside the gateway: the destination side's send buffer, the pipe, the sandbox side's receive buffer.
Then the connection is cut: a policy without the site's port applied with ``on_apply: close_forbidden``, or the
worker holding it killed. The site then reads on; the capture on the internet side says how many of the upload's
bytes crossed after the cut (the site's window was closed: nothing crossed between the cut and the snapshot).

Was: the relay's close was ``close(2)`` of both sockets, which ends a TCP connection gracefully: the kernel goes
on sending what the send buffer holds, then a FIN, so megabytes the gateway held crossed after the policy that
forbids them was in force (and after the worker died, whose sockets the kernel closes the same way). Now a cut
aborts the connection (``SO_LINGER`` zero: a reset, the send buffer dropped): `egress.proxy.splice.Relay`.

Rows: one upload (a direction with a thread of its own); ten at once (past the 8 threads: the others splice on
the event loop), cut by the policy; one upload, the worker killed. The lockdown row: another component down, the
lockdown table drops the sandbox's packets, and the living workers are told to abort their open connections (was:
their relays went on sending what they held; now the supervisor's ``CUT``, `egress.gateway.workers.cut_open`).
A passing row: ten stalled uploads (every thread taken) do not stall an eleventh that is read at once.
Through mitmproxy: a WebSocket upload cut by the policy (``egress.proxy.mitm.server``'s severing now aborts both
sides; was: 10 MB crossed after the cut), and its worker killed; a plain-HTTP POST of 4 MiB (mitmproxy reads it
whole, then writes it to the site), its worker killed. Was: mitmproxy's server connections closed gracefully when
their process died (0.4-1 MB crossed after the kill); now each has ``SO_LINGER`` zero from its connect until
mitmproxy ends it gracefully (`egress.proxy.mitm.linger`). A passing row: a POST whose client closed while the site
was not reading still arrives whole (graceful ends stay graceful).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, Capture, SecurityLab, report
from tests.security.redteam_splice_kit import POST_SIZE
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

POLICY = POLICIES / "redteam_splice.yaml"
SITE = server("allowed").v4
PORT = 8443
PILED = 256 * 1024
"""Bytes each upload must have waiting in the gateway's destination-side send buffer before the cut."""
_KIT = "from tests.security.redteam_splice_kit import {0}; {0}()"


def _upstream(lab: SecurityLab, port: int = PORT) -> list[tuple[int, int]]:
    """(send queue, owner pid) of each of the gateway's established connections to the site."""
    argv = ["ss", "-Htnp", "state", "established", "dst", f"{SITE}:{port}"]
    done = lab.gateway(argv)
    found = []
    for line in done.stdout.splitlines():
        fields = line.split()
        owner = re.search(r"pid=(\d+)", line)
        if len(fields) >= 2 and owner:
            found.append((int(fields[1]), int(owner.group(1))))
    return found


def _piled_up(lab: SecurityLab, count: int) -> list[tuple[int, int]]:
    def enough() -> list[tuple[int, int]]:
        found = _upstream(lab)
        assert len(found) == count and all(queue >= PILED for queue, _ in found), found
        return found

    return eventually(enough, timeout=scaled(60), interval=0.2)


def _start(
    lab: SecurityLab, tmp: pathlib.Path, count: int, name: str, *site_args: str
) -> tuple[Attacker, Attacker, pathlib.Path]:
    flag = tmp / "read-on"
    argv = [sys.executable, "-c", _KIT.format("site_main"), SITE, str(PORT), str(lab.lab.state_dir), str(flag)]
    argv += site_args
    site = lab.attacker(f"{name}-site", argv)
    site.wait_for("listening")
    argv = [sys.executable, "-c", _KIT.format("upload_main"), GATEWAY_SBX_V4, str(PORT), str(count)]
    client = lab.attacker(f"{name}-upload", argv, where="sandbox")

    def held() -> bool:
        assert site.log().count("held ") == count, site.log()[-500:] + client.log()[-500:]
        return True

    eventually(held, timeout=scaled(60), interval=0.1)
    return site, client, flag


def _crossed(capture: Capture) -> int:
    return capture.snapshot().bytes_to(SITE, PORT, "tcp")


def _crossed_since(capture: Capture, before: int, port: int = PORT) -> int:
    """Bytes to the site's ``port`` in the whole capture (it has ended) after the first ``before``."""
    crossed = capture.result
    assert crossed is not None
    return crossed.bytes_to(SITE, port, "tcp") - before


def _forbidding(tmp: pathlib.Path, port: int) -> pathlib.Path:
    """The policy without allowed.lab's ``port``, applied with ``on_apply: close_forbidden`` (the cut)."""
    forbidding = tmp / f"without-{port}.yaml"
    forbidding.write_text(POLICY.read_text().replace(f", {port}", "") + "on_apply: close_forbidden\n")
    return forbidding


def _restore(lab: SecurityLab, tmp: pathlib.Path, why: str) -> None:
    """The policy applied again after a cut (``why``: a comment, so that it differs from the one in force)."""
    restored = tmp / "restored.yaml"
    restored.write_text(POLICY.read_text() + f"# restored after {why}\n")
    _apply(lab, restored)


def _after_cut(lab: SecurityLab, site: Attacker, flag: pathlib.Path, count: int, capture: Capture) -> int:
    """Bytes to the site that cross once the site reads on (the cut is done: no connection established)."""
    eventually(lambda: _upstream(lab) == [] or None, timeout=scaled(30), interval=0.1)
    before = _crossed(capture)
    flag.touch()
    eventually(lambda: site.log().count("done ") == count or None, timeout=scaled(60), interval=0.1)
    return before


def _apply(lab: SecurityLab, path: pathlib.Path) -> None:
    argv = [sys.executable, "-m", "egress", "rules", "apply", str(path), "--wait", str(scaled(60))]
    done = lab.gateway([*argv, "--redis-url", lab.run.redis_url], timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(policy=POLICY)


@pytest.mark.parametrize("count", [1, 10])
def test_a_cut_by_the_policy_sends_nothing_more(lab: SecurityLab, tmp_path: pathlib.Path, count: int) -> None:
    forbidding = _forbidding(tmp_path, PORT)
    with lab.capture(f"splice-cut-{count}") as capture:
        site, client, flag = _start(lab, tmp_path, count, f"cut{count}")
        try:
            _piled_up(lab, count)
            _apply(lab, forbidding)
            before = _after_cut(lab, site, flag, count, capture)
        finally:
            client.stop()
            site.stop()
    leaked = _crossed_since(capture, before)
    _restore(lab, tmp_path, str(count))
    note = f"{count} uploads of which 8 at most with a thread; {leaked} bytes crossed after the cut"
    report(f"splice/cut-by-policy-{count}", "after-close", leaked, leaked > 0, None, note)
    assert leaked == 0, note


STALLED = 10
"""Uploads held by the site in the stall row: past the threads (`egress.proxy.splice.BIG_PIPES`) of a worker."""
FREE_SIZE = 8 * 1024 * 1024


def test_stalled_uploads_past_the_threads_do_not_stall_another(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """Ten uploads the site stops reading hold every splice thread (one worker's, or both's); an eleventh upload,
    read at once, still goes through whole (a passing row: each direction waits on its own destination)."""
    with lab.capture("splice-stall") as capture:
        site, client, flag = _start(lab, tmp_path, STALLED, "stall", str(STALLED))
        try:
            _piled_up(lab, STALLED)
            argv = [_KIT.format("upload_main"), GATEWAY_SBX_V4, str(PORT), "1", str(FREE_SIZE)]
            done = lab.sandbox_python(*argv, timeout=120)
            site.wait_for(rf"done {STALLED} \d+", timeout=60)
        finally:
            flag.touch()
            client.stop()
            site.stop()
    crossed = capture.result
    assert crossed is not None
    got = int(re.findall(rf"done {STALLED} (\d+)", site.log())[0])
    note = f"the free upload: {done.stdout.strip()!r}, the site read {got} of {FREE_SIZE} bytes"
    report("splice/stalled-past-the-threads", "denial", 0, got != FREE_SIZE, None, note)
    assert f"sent 0 {FREE_SIZE}" in done.stdout and got == FREE_SIZE, note


def _gone(lab: SecurityLab, since: int, pid: int) -> None:
    """Wait until the supervisor reaped the killed worker ``pid``: only then are its sockets surely closed. A process
    tears its memory down before it closes its files, and meanwhile ``ss`` may no longer name it as a socket's owner
    (so `_upstream` is empty while the socket still sends what it holds, until its close resets it)."""
    log = lab.run.lab.state_dir / "logs" / "gateway.log"
    down = f"pid {pid} exited"
    eventually(lambda: down in log.read_text(errors="replace")[since:] or None, timeout=scaled(60), interval=0.1)


def _alive_again(lab: SecurityLab, since: int) -> None:
    log = lab.run.lab.state_dir / "logs" / "gateway.log"

    def back() -> bool:
        text = log.read_text(errors="replace")[since:]
        assert "policy table" in text and "in force again" in text, text[-1000:]
        return True

    eventually(back, timeout=scaled(90), interval=0.3)


def test_a_killed_worker_sends_nothing_more(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    log = lab.run.lab.state_dir / "logs" / "gateway.log"
    with lab.capture("splice-kill") as capture:
        site, client, flag = _start(lab, tmp_path, 1, "kill")
        try:
            [(_, pid)] = _piled_up(lab, 1)
            since = len(log.read_text(errors="replace"))
            os.kill(pid, signal.SIGKILL)
            _gone(lab, since, pid)
            before = _after_cut(lab, site, flag, 1, capture)
        finally:
            client.stop()
            site.stop()
    leaked = _crossed_since(capture, before)
    _alive_again(lab, since)
    note = f"{leaked} bytes crossed after the worker holding the upload was killed"
    report("splice/worker-killed", "after-close", leaked, leaked > 0, None, note)
    assert leaked == 0, note


def _worker_pids(lab: SecurityLab) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", lab.lab.gateway_ns], capture_output=True, text=True, check=False)
    found = []
    for pid in map(int, done.stdout.split()):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"egress.gateway.worker" in cmdline:
            found.append(pid)
    return found


def test_a_lockdown_stops_what_the_gateway_holds(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """Another component down (the other worker killed): the lockdown. The worker holding the upload lives on, and
    is told to abort its open connections (the supervisor's ``CUT``, `egress.gateway.workers.cut_open`); was: its
    relay went on sending what it held (2.3 MB and 13.7 MB crossed during the lockdown). Judged from the cut (the
    holder's upstream connection gone, or 10 s after the lockdown) to the site's end of the connection, the site
    reading on only then: a site that does not read still takes a few KB now and then (the kernel collapses its
    receive queue and opens the window a little: 11 KB crossed between the kill and the cut in one CI run)."""
    log = lab.run.lab.state_dir / "logs" / "gateway.log"
    with lab.capture("splice-lockdown") as capture:
        site, client, flag = _start(lab, tmp_path, 1, "lockdown")
        try:
            [(_, holder)] = _piled_up(lab, 1)
            [other] = [pid for pid in _worker_pids(lab) if pid != holder]
            since = len(log.read_text(errors="replace"))
            os.kill(other, signal.SIGKILL)  # a component down: the lockdown, while the holder lives on
            eventually(lambda: "LOCKDOWN" in log.read_text(errors="replace")[since:] or None, timeout=scaled(30))
            with contextlib.suppress(AssertionError):  # the cut; without it the bytes below say what went on
                eventually(lambda: _upstream(lab) == [] or None, timeout=scaled(10), interval=0.1)
            before = _crossed(capture)
            flag.touch()
            with contextlib.suppress(AssertionError):  # the site reads on to the reset (or what the relay sends)
                eventually(lambda: site.log().count("done ") == 1 or None, timeout=scaled(5), interval=0.1)
            during = _crossed(capture) - before  # what the lockdown should have cut, whenever it crossed
            locked = "in force again" not in log.read_text(errors="replace")[since:]
        finally:
            client.stop()
            site.stop()
    _alive_again(lab, since)
    ended = "" if locked else " (the policy table was back before the snapshot: those after it counted in)"
    note = f"{during} bytes crossed after the lockdown began{ended}"
    report("splice/lockdown", "after-close", during, during > 0, None, note)
    assert during == 0, note
    text = log.read_text(errors="replace")[since:]
    assert "lockdown: 1 open connection(s) closed" in text, text[-2000:]  # the worker logged its cut


WS_PORT = 8080


def _ws_start(
    lab: SecurityLab, flag: pathlib.Path, name: str, site_args: tuple[str, ...] = (), upload: tuple[str, ...] = ()
) -> tuple[Attacker, Attacker]:
    """The site on `WS_PORT` and its upload through mitmproxy, piled up in the gateway: a WebSocket's by default;
    ``site_args`` ``("http",)`` and ``upload`` (`http_upload_main`'s function and arguments) for a POST."""
    argv = [sys.executable, "-c", _KIT.format("ws_site_main"), SITE, str(WS_PORT), str(flag), *site_args]
    site = lab.attacker(f"{name}-site", argv)
    site.wait_for("listening")
    program, *args = upload or ("ws_upload_main",)
    argv = [sys.executable, "-c", _KIT.format(program), GATEWAY_SBX_V4, str(WS_PORT), *args]
    client = lab.attacker(f"{name}-upload", argv, where="sandbox")
    site.wait_for("held 0", timeout=60)

    def piled() -> list[tuple[int, int]]:
        found = _upstream(lab, WS_PORT)
        assert len(found) == 1 and found[0][0] >= PILED, (found, client.log()[-300:])
        return found

    eventually(piled, timeout=scaled(60), interval=0.2)
    return site, client


def test_a_websocket_cut_by_the_policy_sends_nothing_more(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """The same through mitmproxy: a WebSocket upload of text messages to the attacker's site, which stops
    reading; the policy without 8080 cuts it (`egress.proxy.mitm.server`'s severing of both sides)."""
    forbidding = _forbidding(tmp_path, WS_PORT)
    flag = tmp_path / "read-on"
    with lab.capture("splice-ws-cut") as capture:
        site, client = _ws_start(lab, flag, "ws-cut")
        try:
            log = lab.logs / "gateway.log"
            since = len(log.read_text(errors="replace"))
            _apply(lab, forbidding)
            cut = "on_apply: close_forbidden: 1 open connection(s) closed"
            eventually(lambda: cut in log.read_text(errors="replace")[since:] or None, timeout=scaled(30))
            before = capture.snapshot().bytes_to(SITE, WS_PORT, "tcp")  # the site's window is closed: none since
            flag.touch()
            site.wait_for("done 0", timeout=60)
        finally:
            client.stop()
            site.stop()
    leaked = _crossed_since(capture, before, WS_PORT)
    _restore(lab, tmp_path, "the WebSocket")
    note = f"{leaked} bytes crossed after the cut; client: {client.log()[-80:]!r}"
    report("splice/websocket-cut-by-policy", "after-close", leaked, leaked > 0, None, note)
    assert leaked == 0, note


def _killed(lab: SecurityLab, tmp_path: pathlib.Path, name: str, *how: tuple[str, ...]) -> tuple[int, str]:
    """Bytes of the upload that crossed after the worker holding it was killed (``how``: `_ws_start`'s), and what
    the connection held before the kill and how the site's read ended (for the row's note)."""
    log = lab.run.lab.state_dir / "logs" / "gateway.log"
    flag = tmp_path / "read-on"
    with lab.capture(f"splice-{name}") as capture:
        site, client = _ws_start(lab, flag, name, *how)
        try:
            [(queued, pid)] = _upstream(lab, WS_PORT)
            since = len(log.read_text(errors="replace"))
            os.kill(pid, signal.SIGKILL)
            _gone(lab, since, pid)
            eventually(lambda: _upstream(lab, WS_PORT) == [] or None, timeout=scaled(30), interval=0.1)
            before = capture.snapshot().bytes_to(SITE, WS_PORT, "tcp")
            flag.touch()
            site.wait_for("done 0", timeout=60)
        finally:
            client.stop()
            site.stop()
    crossed = capture.result
    assert crossed is not None
    _alive_again(lab, since)
    ended = re.findall(r"done 0 .*", site.log())
    return crossed.bytes_to(SITE, WS_PORT, "tcp") - before, f"{queued} bytes queued at the kill; site: {ended}"


def test_a_killed_worker_sends_nothing_more_of_a_websocket(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """Was (red team 7): 381-579 KB crossed after the kill, what the kernel held of mitmproxy's server connection
    (a death closed it gracefully). Now each server connection resets on a death (`egress.proxy.mitm.linger`)."""
    leaked, detail = _killed(lab, tmp_path, "ws-kill")
    note = f"{leaked} bytes of a WebSocket upload crossed after its worker was killed ({detail})"
    report("splice/websocket-worker-killed", "after-close", leaked, leaked > 0, None, note)
    assert leaked == 0, note


def test_a_killed_worker_sends_nothing_more_of_an_http_upload(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """A plain HTTP POST (4 MiB: mitmproxy reads it whole, judges it, then writes it to the site, which stops
    reading): its worker killed while the site holds the upload."""
    leaked, detail = _killed(lab, tmp_path, "http-kill", ("http",), ("http_upload_main", "wait"))
    note = f"{leaked} bytes of an HTTP upload crossed after its worker was killed ({detail})"
    report("splice/http-upload-worker-killed", "after-close", leaked, leaked > 0, None, note)
    assert leaked == 0, note


def test_a_graceful_end_still_delivers_the_whole_upload(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """Graceful ends stay graceful: the sandbox sends its whole POST and closes while the site is not reading;
    mitmproxy ends its server connection gracefully (its buffer and the kernel's still to go), and once the site
    reads on, every byte of the body arrives, then an orderly end (a reset there would cut a finished upload)."""
    flag = tmp_path / "read-on"
    site, client = _ws_start(lab, flag, "http-close", ("http",), ("http_upload_main", "close"))
    try:
        client.wait_for("closed", timeout=60)
        flag.touch()
        site.wait_for("done 0", timeout=60)
    finally:
        client.stop()
        site.stop()
    done = re.findall(r"done 0 (\d+) (\w+)", site.log())
    assert done == [(str(POST_SIZE), "eof")], (done, site.log()[-300:], client.log()[-300:])
