"""What `kpe.save_model` holds in memory while it rewrites a large `.keras` archive, per backend.

A model with one weight of `--megabytes` (default 200) MB, in a policy whose
name Keras cannot parse (so `save_model` rewrites the archive to add its
note), is saved with `kpe.save_model`. Measured with `tracemalloc` in a fresh
process per backend:

- Keras's `model.save`: the peak while Keras writes the archive (Keras's own
  work, for scale: it holds the weights in memory when it thinks there is
  room).
- kpe's rewrite: the peak that kpe's own work on the archive adds, from the
  moment Keras's `model.save` returns. Target: at most 10% of the weight
  file (the archive is streamed, never read whole).

Run from the repository root:

    python benchmarks/save_memory.py                  # every importable backend
    python benchmarks/save_memory.py --backend jax --megabytes 50

It prints one Markdown table and the missed targets; it exits 0 when it
measured everything (a missed target is reported, not an error), 1 when a
measurement could not run, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc

from per_backend import argument_parser, child_or_report, markdown_table, run_child, selected

TARGET_SHARE = 0.10
POLICY = "params=bfloat16,compute=float32"  # 2 bytes a weight; a name only kpe parses


def measure(backend: str, megabytes: int) -> list[dict]:
    """This backend's rows (run in a child whose `KERAS_BACKEND` is `backend`)."""
    import keras

    import keras_policy_ext as kpe

    marks: dict[str, int] = {}

    class Marked(keras.Sequential):
        """Records tracemalloc's figures when Keras's own `save` returns."""

        def save(self, *args, **kwargs):
            super().save(*args, **kwargs)
            marks["keras_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            marks["after_keras"] = tracemalloc.get_traced_memory()[0]

    units = megabytes * 2**20 // 2
    with kpe.installed(), kpe.policy_scope(POLICY):
        model = Marked([keras.Input((1,)), keras.layers.Dense(units, use_bias=False)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.keras")
        tracemalloc.start()
        start = time.perf_counter()
        try:
            kpe.save_model(model, path)
            kpe_peak = tracemalloc.get_traced_memory()[1] - marks["after_keras"]
        finally:
            tracemalloc.stop()
        seconds = time.perf_counter() - start
        size = os.path.getsize(path)
    mib = 2**20
    return [
        {
            "backend": backend,
            "case": f"Keras's model.save ({size / mib:.0f} MiB archive)",
            "value": f"{marks['keras_peak'] / mib:.1f} MiB",
            "target": "(Keras's own)",
            "met": True,
        },
        {
            "backend": backend,
            "case": f"kpe's rewrite (save_model total {seconds:.1f} s)",
            "value": f"{kpe_peak / mib:.1f} MiB",
            "target": f"<= {TARGET_SHARE:.0%} of the archive",
            "met": kpe_peak <= TARGET_SHARE * size,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--megabytes", type=int, default=200, help="the weight file's size")
    args = parser.parse_args(argv)
    if args.megabytes < 1:
        parser.error(f"--megabytes must be >= 1; got {args.megabytes}")
    return child_or_report(args, lambda args: measure(args.backend, args.megabytes), _report)


def _report(args: argparse.Namespace) -> int:
    rows, crashed = [], False
    for backend in selected(args.backend):
        backend_rows, _ = run_child(__file__, backend, ["--megabytes", str(args.megabytes)])
        crashed |= backend_rows is None
        rows += backend_rows or []
    cells = [
        [r["backend"], r["case"], r["value"], r["target"], "yes" if r["met"] else "no"]
        for r in rows
    ]
    print(markdown_table(("Backend", "Case", "Peak (tracemalloc)", "Target", "Met"), cells))
    missed = [f"{r['backend']}: {r['case']}" for r in rows if not r["met"]]
    if missed:
        print("\nMissed targets:\n" + "\n".join(f"- {m}" for m in missed))
    return 1 if crashed else 0  # a missed target is a result, not a failure


if __name__ == "__main__":
    raise SystemExit(main())
