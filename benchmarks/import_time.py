"""What importing kpe and asking its command costs, per backend.

Measures, in fresh processes (median of `--rounds`, default 5):

- `import keras`, then `import keras_policy_ext` and the first touch of its
  core (`kpe.DTypePolicy`, `kpe.install`): the milliseconds kpe adds on top
  of Keras, with bytecode cached as a user's Python has it (after one
  warm-up process; `PYTHONDONTWRITEBYTECODE` is dropped for the children).
  Target: at most 30 ms.
- `keras-policy-ext --version`, `--help` and `check --help`, run as the
  console script runs them (`python -m keras_policy_ext`), whole-process
  wall time, and whether the process imported Keras or a backend. Target:
  under 1 s each, no backend imported.

Run from the repository root:

    python benchmarks/import_time.py                # every importable backend
    python benchmarks/import_time.py --backend jax --rounds 9

It prints one Markdown table and the missed targets; it exits 0 when it
measured everything (a missed target is reported, not an error), 1 when a
measurement could not run, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from per_backend import argument_parser, child_or_report, report_targets, selected

IMPORT_TARGET_MS = 30.0
COMMAND_TARGET_S = 1.0
COMMANDS = (["--version"], ["--help"], ["check", "--help"])
HEAVY = ("keras", "tensorflow", "jax", "torch")

_IMPORT = """
import json, sys, time
t0 = time.perf_counter()
import keras
t1 = time.perf_counter()
import keras_policy_ext as kpe
kpe.DTypePolicy, kpe.install
t2 = time.perf_counter()
print(json.dumps({"keras": t1 - t0, "kpe": t2 - t1}))
"""

_COMMAND = """
import json, runpy, sys
argv, modules = map(json.loads, sys.argv[1:3])
sys.argv = ["keras-policy-ext", *argv]
try:
    runpy.run_module("keras_policy_ext", run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in modules if m in sys.modules]
print(json.dumps(heavy), file=sys.stderr)
"""


# As a user's Python runs: bytecode cached (Keras's was compiled when pip
# installed it; kpe's, from an editable install, is written at first import),
# even where PYTHONDONTWRITEBYTECODE is set for this process.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, check=True, env=_ENV,
    )  # fmt: skip


def measure(backend: str, rounds: int) -> list[dict]:
    """This backend's rows (run in a child whose `KERAS_BACKEND` is `backend`)."""
    _python(_IMPORT)  # a warm-up run writes the bytecode cache
    imports = [json.loads(_python(_IMPORT).stdout.splitlines()[-1]) for _ in range(rounds)]
    keras_ms = statistics.median(r["keras"] for r in imports) * 1e3
    kpe_ms = statistics.median(r["kpe"] for r in imports) * 1e3
    rows = [
        {
            "backend": backend,
            "case": "import keras_policy_ext (after keras)",
            "value": f"{kpe_ms:.1f} ms (keras: {keras_ms:.0f} ms)",
            "target": f"<= {IMPORT_TARGET_MS:g} ms",
            "met": kpe_ms <= IMPORT_TARGET_MS,
        }
    ]
    for argv in COMMANDS:
        times, heavy = [], set()
        for _ in range(rounds):
            start = time.perf_counter()
            done = _python(_COMMAND, json.dumps(argv), json.dumps(HEAVY))
            times.append(time.perf_counter() - start)
            heavy |= set(json.loads(done.stderr.strip().splitlines()[-1]))
        seconds = statistics.median(times)
        rows.append(
            {
                "backend": backend,
                "case": f"keras-policy-ext {' '.join(argv)}",
                "value": f"{seconds:.2f} s"
                + (f", imports {', '.join(sorted(heavy))}" if heavy else ""),
                "target": f"< {COMMAND_TARGET_S:g} s, no backend",
                "met": seconds < COMMAND_TARGET_S and not heavy,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per case")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    return child_or_report(args, lambda args: measure(args.backend, args.rounds), _report)


def _report(args: argparse.Namespace) -> int:
    flags = ["--rounds", str(args.rounds)]
    return report_targets(__file__, selected(args.backend), flags, "Median")


if __name__ == "__main__":
    sys.exit(main())
