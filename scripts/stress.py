#!/usr/bin/env python3
"""Runs the integration suite N times with both cores kept busy, and prints each test's
failure count: a flaky test shows up here before it shows up in CI.

    python3 scripts/stress.py [N]      (make stress N=20)

The test binaries are built once; each run executes every binary as `cargo test` would. Two
busy loops (one per core of the CI machine) run for the whole time, so timing bounds are
checked on a loaded machine. Exits non-zero if any test failed in any run.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

# A run of one binary that takes longer than this is counted as a failure of every test in it.
BINARY_TIMEOUT_S = 900
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", re.MULTILINE)


def build():
    """Builds the integration test binaries and returns (name, path) for each."""
    out = subprocess.run(
        ["cargo", "test", "--all-features", "--tests", "--no-run", "--message-format=json"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    binaries = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and target.get("kind") == ["test"] and msg.get("executable"):
            binaries.append((target["name"], msg["executable"]))
    return sorted(binaries)


def burners(count):
    """Busy loops, one per core to keep busy."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    binaries = build()
    if not binaries:
        sys.exit("no integration test binaries found")
    passed = defaultdict(int)
    failed = defaultdict(int)
    notes = defaultdict(list)
    hogs = burners(2)
    started = time.monotonic()
    try:
        for run in range(1, runs + 1):
            run_started = time.monotonic()
            failures_this_run = 0
            for name, path in binaries:
                try:
                    proc = subprocess.run(
                        [path],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        timeout=BINARY_TIMEOUT_S,
                        cwd=os.getcwd(),
                    )
                    output = proc.stdout
                except subprocess.TimeoutExpired as e:
                    output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                    failed[f"{name} (binary timed out)"] += 1
                for test, outcome in RESULT.findall(output):
                    key = f"{name}::{test}"
                    if outcome == "ok":
                        passed[key] += 1
                    elif outcome == "FAILED":
                        failed[key] += 1
                        failures_this_run += 1
                        panic = re.search(
                            rf"thread '{re.escape(test)}'.*?panicked at [^\n]*\n([^\n]*)", output
                        )
                        if panic and len(notes[key]) < 3:
                            notes[key].append(f"run {run}: {panic.group(1)[:160]}")
            print(
                f"run {run}/{runs}: {failures_this_run} failed "
                f"({time.monotonic() - run_started:.0f} s)",
                flush=True,
            )
    finally:
        for hog in hogs:
            hog.kill()

    tests = sorted(set(passed) | set(failed))
    width = max(len(t) for t in tests)
    print(f"\n{len(tests)} tests, {runs} runs, both cores busy, {time.monotonic() - started:.0f} s")
    print(f"{'test'.ljust(width)}  runs  failures")
    for test in sorted(tests, key=lambda t: (-failed[t], t)):
        if failed[test] or "--all" in sys.argv:
            print(f"{test.ljust(width)}  {passed[test] + failed[test]:4}  {failed[test]:8}")
            for note in notes[test]:
                print(f"    {note}")
    flaky = [t for t in tests if failed[t]]
    clean = len(tests) - len(flaky)
    print(f"{clean} of {len(tests)} tests passed every run; {len(flaky)} failed at least once")
    sys.exit(1 if flaky else 0)


if __name__ == "__main__":
    main()
