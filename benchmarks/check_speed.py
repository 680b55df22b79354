"""How long `keras-policy-ext check` takes, and where its time goes.

Measures, on this machine, the conformance matrix as `keras-policy-ext check`
runs it (`keras_policy_ext.cli.matrix.run_matrix`: one process per backend,
every zoo layer x the policies x kpe's and Keras's policy classes):

- the full run: every selected backend's process at once, as the command runs
  them: the wall time of the whole matrix, its CPU time (user and system, of
  every process it ran: on 2 cores the three backends' processes share, the
  sum is what bounds the wall time), and each backend's process's wall time
  (from `run_matrix`'s twice-a-second `on_tick`, so to within 0.5 s). Target
  for the default run (every zoo layer, the 6 default policies, all three
  backends): at most 45 s.
- each backend alone (its process the only one the matrix runs): wall and CPU
  time, cases, the cost per case (wall time over cases), and the layers that
  cost the most per case. A layer's time runs from the previous layer's
  progress line to its own, so the first layer's includes the process's start
  (importing Keras and the backend), which is reported apart.
- with `--baseline DIR` (another checkout of the package, such as
  `git worktree add /tmp/base <commit>`), the same for that version, side by
  side in one run (the two alternate, round by round), the ratio of the full
  runs' median wall times (target: at most 1/3) and whether both versions
  report exactly the same findings: the set of (layer, policy, source,
  backend, check, short) (a numerics finding's number aside: it depends on
  the random weights).

Each version runs in a fresh driver process whose working directory is a
temporary directory and whose `PYTHONPATH` starts with the version's root, so
the driver and the backend processes it starts import that version (which is
why this script does not use `per_backend.run_child`: that puts this checkout
first, and runs one backend per process, where the matrix runs them all).

Run from the repository root:

    python benchmarks/check_speed.py                          # the default run
    python benchmarks/check_speed.py --baseline /tmp/base --rounds 3
    python benchmarks/check_speed.py --backend jax --layers LSTM,GRU --policies mixed_float16

It prints Markdown tables, the missed targets and any findings that differ.
It exits 0 when everything was measured (a missed target is reported, not an
error), 1 when a run broke (a backend's process crashed or timed out, or a
driver failed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

from per_backend import ROOT, argument_parser, markdown_table, selected

from keras_policy_ext.cli.matrix import jax_cache_env

TARGET_SECONDS = 45.0
TARGET_RATIO = 1 / 3
BACKEND_TIMEOUT = 1800.0

# Runs in a fresh process with the version under test first on `PYTHONPATH`;
# prints one JSON line: wall time, CPU time (this process and every process it
# started, theirs included, user and system), each backend's process time,
# per-layer progress times, cases and findings.
_DRIVER = r"""
import json, re, resource, sys, time

from keras_policy_ext.cli.matrix import run_matrix

args = json.loads(sys.argv[1])
running = {}  # backend -> last seen running seconds
progress = {}  # backend -> [(layers done, perf_counter)]
start = time.perf_counter()


def on_tick(state):
    for backend, seconds in state.items():
        if seconds is not None:
            running[backend] = seconds


def on_progress(backend, done, total):
    progress.setdefault(backend, []).append((done, time.perf_counter() - start))


result = run_matrix(
    backends=args["backends"], policies=args["policies"] or None, layers=args["layers"],
    on_progress=on_progress, on_tick=on_tick, timeout=args["timeout"],
)
wall = time.perf_counter() - start
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
from keras_policy_ext.testing.zoo import select  # after the clock: it may import Keras

names = [e.name for e in select(args["layers"])]
backends = {}
for backend, r in result.backends.items():
    findings = sorted(
        {
            (c["layer"], c["policy"], c["source"], c["backend"], f["check"],
             re.sub(r"[0-9.e+-]+", "#", f["short"]) if f["check"] == "numerics" else f["short"])
            for c in r.get("cases", ()) for f in c["findings"]
        }
    )
    cases = {}
    for c in r.get("cases", ()):
        cases[c["layer"]] = cases.get(c["layer"], 0) + 1
    layers, last = [], 0.0
    for done, at in progress.get(backend, []):
        layers.append([names[done - 1], at - last, cases.get(names[done - 1], 0)])
        last = at
    backends[backend] = {
        "seconds": running.get(backend), "cases": len(r.get("cases", ())),
        "findings": findings, "layers": layers,
        "error": r.get("error") or r.get("skipped"),
    }
print(json.dumps({"wall": wall, "cpu": cpu, "backends": backends}))
"""


def run_version(
    root: str,
    backends: list[str],
    layers: list[str],
    policies: list[str],
    cache: str | None = None,
) -> dict:
    """One run of the matrix by the package at `root`, in a fresh driver process.

    Its result: `wall`, and per backend `seconds`, `cases`, `findings`,
    `layers` (`[name, seconds, cases]` in order) and `error`; or `{"error":
    ...}` when the driver itself failed. With `cache`, JAX's processes keep
    every program they compile in that directory, with the variables `check
    --cache-dir` sets (JAX's own, so that any version takes them).
    """
    args = {"backends": backends, "layers": layers, "policies": policies}
    path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold run is cold: not the user's cache
    if cache is not None:
        env |= jax_cache_env(cache)
    env.pop("KERAS_BACKEND", None)
    with tempfile.TemporaryDirectory(prefix="kpe-check-speed-") as cwd:
        done = subprocess.run(
            [sys.executable, "-c", _DRIVER, json.dumps({**args, "timeout": BACKEND_TIMEOUT})],
            cwd=cwd, env=env, capture_output=True, text=True,
        )  # fmt: skip
    if done.returncode != 0 or not done.stdout.strip():
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"error": f"driver exited with status {done.returncode}: {tail}"}
    return json.loads(done.stdout.splitlines()[-1])


def broken(run: dict) -> list[str]:
    """Why a run is not a measurement: a failed driver, a crashed or stopped backend."""
    if "backends" not in run:
        return [run["error"]]
    return [f"{b}: {r['error']}" for b, r in run["backends"].items() if r["error"]]


def findings(runs: list[dict], backends: list[str]) -> set[tuple]:
    """Every finding of the runs that did not break, as (layer, policy, source, backend, ...)."""
    return {
        tuple(f) for r in runs if not broken(r) for b in backends
        for f in r["backends"][b]["findings"]
    }  # fmt: skip


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def full_table(runs: dict[str, list[dict]], backends: list[str]) -> str:
    """One row per version and round: the matrix's wall time and each backend's."""
    header = ("Version", "Round", "Wall", "CPU", *backends, "Cases", "Findings")
    rows = []
    for version, version_runs in runs.items():
        for i, run in enumerate(version_runs, 1):
            if "backends" not in run:
                rows.append([version, str(i), "broke", "-", *["-"] * len(backends), "-", "-"])
                continue
            per = [run["backends"][b] for b in backends]
            rows.append(
                [version, str(i), _seconds(run["wall"]), _seconds(run["cpu"]),
                 *[_seconds(r["seconds"]) for r in per],
                 str(sum(r["cases"] for r in per)), str(sum(len(r["findings"]) for r in per))]
            )  # fmt: skip
    return markdown_table(header, rows)


def alone_table(alone: dict[str, dict[str, dict]], top: int) -> str:
    """Per version and backend: wall time, cases, cost per case, the costliest layers."""
    header = ("Version", "Backend", "Wall", "CPU", "Cases", "Per case", "Start + first layer",
              "Costliest (per case)")  # fmt: skip
    rows = []
    for version, per_backend in alone.items():
        for backend, run in per_backend.items():
            r = run.get("backends", {}).get(backend)
            if r is None or r["error"]:
                why = (r or run).get("error") or "no result"
                rows.append([version, backend, "broke", "-", "-", "-", "-", why[:80]])
                continue
            layers = r["layers"]
            later = [(name, s / n) for name, s, n in layers[1:] if n]
            costliest = sorted(later, key=lambda item: -item[1])[:top]
            rows.append(
                [version, backend, _seconds(run["wall"]), _seconds(run["cpu"]), str(r["cases"]),
                 f"{run['wall'] / max(r['cases'], 1) * 1e3:.0f} ms",
                 _seconds(layers[0][1]) if layers else "-",
                 ", ".join(f"{name} {cost * 1e3:.0f} ms" for name, cost in costliest) or "-"]
            )  # fmt: skip
    return markdown_table(header, rows)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--baseline", metavar="DIR", help="another checkout to run side by side")
    parser.add_argument("--rounds", type=int, default=1, help="full runs per version (median)")
    parser.add_argument("--layers", type=_csv, default=[], help="zoo layers (default: all)")
    parser.add_argument(
        "--policies", type=_csv, default=[], help="policies (default: the 6 default ones)"
    )
    parser.add_argument("--no-alone", action="store_true", help="skip the backend-alone runs")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="full runs with JAX's compilation cache filled first by one untimed run "
        "per version (check --cache-dir, a later run)",
    )
    parser.add_argument("--top", type=int, default=5, help="costliest layers listed per backend")
    args = parser.parse_args(argv)
    if args.child:
        parser.error("--child is not used by this script")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    if args.baseline is not None:
        args.baseline = os.path.abspath(args.baseline)
        if not os.path.isfile(os.path.join(args.baseline, "keras_policy_ext", "__init__.py")):
            parser.error(f"--baseline {args.baseline!r} holds no keras_policy_ext package")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    backends = selected(args.backend)
    versions = {"this": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        caches = {v: None for v in versions}
        for version in versions if args.warm else ():
            caches[version] = stack.enter_context(tempfile.TemporaryDirectory(prefix="kpe-warm-"))
            print(f"filling JAX's cache: {version} ...", file=sys.stderr, flush=True)
            run = run_version(
                versions[version], backends, args.layers, args.policies, caches[version]
            )  # fmt: skip
            failures += [f"{version} warm-up run: {why}" for why in broken(run)]
        for i in range(args.rounds):  # alternate, the order swapping each round
            for version in list(versions)[:: 1 if i % 2 == 0 else -1]:
                print(f"full run {i + 1}/{args.rounds}: {version} ...", file=sys.stderr, flush=True)
                run = run_version(
                    versions[version], backends, args.layers, args.policies, caches[version]
                )  # fmt: skip
                runs[version].append(run)
    alone: dict[str, dict[str, dict]] = {v: {} for v in versions}
    if not args.no_alone:
        for backend in backends:
            for version, root in versions.items():
                print(f"{backend} alone: {version} ...", file=sys.stderr, flush=True)
                alone[version][backend] = run_version(root, [backend], args.layers, args.policies)

    warm = " (warm: JAX's compilation cache filled by an untimed run first)" if args.warm else ""
    print(f"Full run, every backend's process at once{warm}:\n")
    print(full_table(runs, backends))
    if not args.no_alone:
        print("\nEach backend alone:\n")
        print(alone_table(alone, args.top))

    failures += [f"{v} full run: {why}" for v, rs in runs.items() for r in rs for why in broken(r)]
    failures += [
        f"{v} {b} alone: {why}" for v, per in alone.items() for b, r in per.items()
        for why in broken(r)
    ]  # fmt: skip
    walls = {v: [r["wall"] for r in rs if not broken(r)] for v, rs in runs.items()}
    targets, differences = [], []  # targets: (target, value, met)
    default_run = not args.layers and not args.policies and len(backends) == 3
    if walls["this"] and default_run:
        wall = statistics.median(walls["this"])
        met = wall <= TARGET_SECONDS
        name = f"default run{', warm cache,' if args.warm else ''} <= {TARGET_SECONDS:g} s"
        targets.append((name, _seconds(wall), met))
    if args.baseline and walls["this"] and walls["baseline"]:
        ratio = statistics.median(walls["this"]) / statistics.median(walls["baseline"])
        targets.append(
            (f"this / baseline <= {TARGET_RATIO:.3f}", f"{ratio:.3f}", ratio <= TARGET_RATIO)
        )
        this, base = (findings(runs[v], backends) for v in ("this", "baseline"))
        targets.append(
            ("findings identical to the baseline's", "yes" if this == base else "no", this == base)
        )
        differences = [f"only this: {f}" for f in sorted(this - base)]
        differences += [f"only the baseline: {f}" for f in sorted(base - this)]
    if targets:
        print("\nTargets:\n")
        cells = [[name, value, "yes" if met else "no"] for name, value, met in targets]
        print(markdown_table(("Target", "Measured", "Met"), cells))
    missed = [name for name, _, met in targets if not met]
    if missed:
        print("\nMissed targets:\n" + "\n".join(f"- {m}" for m in missed))
    if differences:
        print("\nFindings that differ:\n" + "\n".join(f"- {d}" for d in differences))
    if failures:
        print("\nRuns that broke:\n" + "\n".join(f"- {f}" for f in failures))
    return 1 if failures else 0  # a missed target is a result, not a failure


if __name__ == "__main__":
    sys.exit(main())
