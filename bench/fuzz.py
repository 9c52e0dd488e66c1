"""The long coverage-guided fuzz run (`make fuzz-long`): every target of tests/security/fuzz_targets.py under atheris.

Each target fuzzes for ``--seconds`` in its own process (``--jobs`` at a time), from every seed fuzz_seeds.py cuts
out of real captures plus the corpus earlier runs grew, which is kept in ``--out`` (``.fuzz/`` by default,
``<target>/corpus``): a second run starts where the first stopped. A crashing input lands in
``<target>/crashes/``; make it a regression test (tests/security/fuzz_found/<target>/, test_fuzz_regressions.py).
Prints one row per target: inputs run, CPU seconds, coverage edges, corpus size, crashes. Exit status 1 on a crash.

    python bench/fuzz.py --seconds 600 --jobs 2 [TARGET...]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.security.fuzz_run import summary  # noqa: E402
from tests.security.fuzz_targets import TARGETS  # noqa: E402


def fuzz(target: str, seconds: int, out: pathlib.Path) -> tuple[str, float, str]:
    """Seeds, then one run of ``target``: (target, CPU seconds, libFuzzer's standard error)."""
    place = out / target
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    run = [sys.executable, "-m", "tests.security.fuzz_run"]
    subprocess.run([*run, "seed", target, str(place / "seeds")], cwd=ROOT, env=env, check=True, capture_output=True)
    command = [*run, "run", target, "--seconds", str(seconds), "--corpus", str(place / "corpus")]
    command += ["--seeds", str(place / "seeds"), "--artifacts", str(place / "crashes")]
    with (place / "last.log").open("w") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, _, usage = os.wait4(child.pid, 0)
    return target, usage.ru_utime + usage.ru_stime, (place / "last.log").read_text(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=600, help="seconds of fuzzing per target (default 600)")
    parser.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once (default 2)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / ".fuzz", help="corpora, crashes, logs")
    args = parser.parse_args()
    names = args.targets or [target.name for target in TARGETS]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda name: fuzz(name, args.seconds, args.out), names))
    print(f"{'TARGET':<10} {'INPUTS':>9} {'CPU S':>7} {'EDGES':>6} {'CORPUS':>6} CRASHES")
    crashed = False
    for name, cpu, log in results:
        found = summary(log, args.out / name / "crashes")
        corpus = len(list((args.out / name / "corpus").glob("*")))
        crashed = crashed or bool(found.crashes)
        names_ = " ".join(path.name for path in found.crashes) or "0"
        print(f"{name:<10} {found.inputs:>9} {cpu:>7.1f} {found.coverage:>6} {corpus:>6} {names_}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
