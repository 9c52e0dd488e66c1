"""Runs one coverage-guided fuzz target (tests/security/fuzz_targets.py) under atheris, or writes its seeds.

    python -m tests.security.fuzz_run seed TARGET DIR          # the target's seeds from real bytes into DIR
    python -m tests.security.fuzz_run run TARGET --seconds N --corpus DIR [--seeds DIR] [--artifacts DIR]
    python -m tests.security.fuzz_run replay TARGET FILE...     # one input each, uninstrumented (a crash file)

``run`` instruments egress's modules for coverage as the target imports them (`atheris.instrument_imports`), then
hands control to libFuzzer for ``--seconds``: new inputs that reach new code go to ``--corpus`` (a long run keeps
it, so the next run starts where this one stopped), a crashing input to ``--artifacts`` as ``crash-<sha1>``.
libFuzzer ends the process itself (after the time, or at the first crash: exit status 1 or more); `summary`
reads its standard error. The compiled hot path (egress/capture/_hot.c) is built without coverage
instrumentation: it is checked differentially against its pure twin, whose coverage guides the search.

Used by the bounded CI run (tests/security/test_fuzz_atheris.py) and the long run (`make fuzz-long`, bench/fuzz.py).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import sys
from dataclasses import dataclass

_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_COVERAGE = re.compile(r"\bcov: (\d+)")
CRASH_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")


@dataclass(frozen=True, slots=True)
class Summary:
    inputs: int
    """Inputs the target ran (libFuzzer's executed units; at a crash, its last progress line)."""
    crashes: tuple[pathlib.Path, ...]
    coverage: int
    """Coverage points (atheris: Python code edges) reached at the end."""


def summary(stderr: str, artifacts: pathlib.Path) -> Summary:
    """What a run did, from libFuzzer's standard error and the artifacts it left."""
    executed = _EXECUTED.findall(stderr) or _PROGRESS.findall(stderr) or ["0"]
    coverage = _COVERAGE.findall(stderr) or ["0"]
    found = sorted(p for p in artifacts.glob("*") if p.name.startswith(CRASH_PREFIXES)) if artifacts.exists() else []
    return Summary(int(executed[-1]), tuple(found), int(coverage[-1]))


def seed_inputs(kind: str) -> tuple[bytes, ...]:
    """The seeds named by a target's ``seeds`` (`fuzz_targets.Target`), from fuzz_seeds.py."""
    from tests.security import fuzz_seeds as seeds

    match kind:
        case "dns":
            return seeds.dns_messages()
        case "tls":
            return (*seeds.first_client_bytes(b"\x16"), *(s[:4096] for _, s in seeds.streams() if s[:1] == b"\x16"))
        case "websocket":
            found = [c[c.find(b"\r\n\r\n") + 4 :] for c in seeds.first_client_bytes(b"GET") if b"pgrade" in c]
            return tuple(bytes([b]) + frames for b in (0, 128, 255) for frames in found if frames)
        case "streams":
            return tuple(
                bytes([len(c) * 255 // max(len(c) + len(s), 1), 7, 0]) + c + s
                for c, s in seeds.streams()
                if len(c) + len(s) <= 8192
            )
        case "codings":
            bodies = [c[c.find(b"\r\n\r\n") + 4 :][:2048] for c in seeds.first_client_bytes() if b"\r\n\r\n" in c]
            return tuple(bytes([choice]) + body for choice in range(10) for body in bodies[:12])
        case "captures":
            return seeds.capture_files()
        case "policies":
            return seeds.policies()
    raise ValueError(f"no seeds called {kind!r}")


def write_seeds(target: str, folder: pathlib.Path) -> int:
    from tests.security.fuzz_targets import BY_NAME

    folder.mkdir(parents=True, exist_ok=True)
    inputs = seed_inputs(BY_NAME[target].seeds)
    for data in inputs:
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(inputs)


def _run(target: str, seconds: int, corpus: pathlib.Path, seeds: pathlib.Path | None, artifacts: pathlib.Path) -> None:
    import atheris
    from atheris.import_hook import instrument_imports  # where the stubs declare it

    with instrument_imports(include=["egress"]):
        from tests.security.fuzz_targets import load

        check = load(target)
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-timeout=120",  # seconds per input: a loaded machine is slow, a hang is still found
        "-rss_limit_mb=4096",
        "-max_len=65536",
        str(corpus),
        *([str(seeds)] if seeds is not None else []),
    ]
    atheris.Setup(args, check)
    atheris.Fuzz()  # never returns: libFuzzer exits the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzz_run", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser("seed")
    seed.add_argument("target")
    seed.add_argument("folder", type=pathlib.Path)
    run = commands.add_parser("run")
    run.add_argument("target")
    run.add_argument("--seconds", type=int, default=5)
    run.add_argument("--corpus", type=pathlib.Path, required=True)
    run.add_argument("--seeds", type=pathlib.Path)
    run.add_argument("--artifacts", type=pathlib.Path, required=True)
    replay = commands.add_parser("replay")
    replay.add_argument("target")
    replay.add_argument("files", type=pathlib.Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "seed":
        print(write_seeds(args.target, args.folder))
        return 0
    if args.command == "run":
        _run(args.target, args.seconds, args.corpus, args.seeds, args.artifacts)
        return 0
    from tests.security.fuzz_targets import load

    check = load(args.target)
    for path in args.files:
        check(path.read_bytes())
        print(f"{path}: passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
