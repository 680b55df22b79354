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

Run it from the repository root, on every importable backend or on one
(`--backend jax --megabytes 50`): `python benchmarks/save_memory.py`.
It prints one Markdown table and the missed targets; exit statuses as
`overhead.py`'s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc

from per_backend import (
    argument_parser,
    at_least_one,
    child_or_report,
    report_targets,
    selected,
)

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
    parser.add_argument(
        "--megabytes", type=at_least_one, default=200, help="the weight file's size (MB)"
    )
    args = parser.parse_args(argv)
    return child_or_report(args, lambda args: measure(args.backend, args.megabytes), _report)


def _report(args: argparse.Namespace) -> int:
    flags = ["--megabytes", str(args.megabytes)]
    return report_targets(__file__, selected(args.backend), flags, "Peak (tracemalloc)")


if __name__ == "__main__":
    raise SystemExit(main())
