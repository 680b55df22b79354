"""Training step time and memory of kpe policies versus Keras's own, per backend.

Measures, in one process per backend (Keras reads `KERAS_BACKEND` once, at
import), for the models `sequential_mlp`, `functional_conv`,
`transformer_block` and `embedding_lstm` of `integration.builders`, under the
policies `float32`, `mixed_float16` and `mixed_bfloat16`, from two sources:

- kpe: built in `kpe.config.policy_scope(kpe.DTypePolicy(name))`, compiled
  with `kpe.compile_model` (loss scaling keyed on dtypes, kpe's floored
  `LossScaleOptimizer`);
- Keras: built in `kpe.config.policy_scope(keras.DTypePolicy(name))` (the
  Keras policy instance is used as given), compiled with plain
  `model.compile` (Keras's own loss scaling, for `mixed_float16` by name).

Each configuration builds a fresh model (same seed, so both sources start
from the same weights), compiles it with `keras.optimizers.Adam(1e-3)` and
loss `"mse"`, and trains it on `data(name, n=256)` with `batch_size=32`
(8 steps per epoch):

- ms/step: after one warm-up epoch of `fit` (it traces / compiles the train
  step), R rounds (default 5; `--rounds`) each time one `fit` of N epochs
  (default 3), with the garbage collector off, and divide by the steps it
  ran (N * 8); the median over rounds is reported. It includes `fit`'s own
  per-call and per-epoch work (data iteration, callbacks), which dominates
  for models this small. Within a round, the kpe and Keras models of the
  same model and policy are timed one after the other, the order swapping
  from one round to the next, so machine drift hits both alike.
- memory: the peak of `tracemalloc`-traced allocations during one more
  `fit` of N epochs, run after the timed rounds (tracemalloc slows Python
  code, so it never runs during a timed fit). tracemalloc traces only memory
  allocated after it starts, so the number is the peak growth, in MiB, of
  memory obtained through Python's allocators (Python objects, and NumPy
  array buffers, which NumPy reports to tracemalloc) while training. It does
  NOT include tensors held by the backend's native allocators (XLA buffers,
  torch CPU tensors, TensorFlow tensors), nor memory allocated while the
  train step was compiled: it measures the Python-side memory of training
  steps (Keras's per-step Python work, data batches), not the model's
  activation or weight memory.

  Why not peak RSS: `ru_maxrss` is process-wide and only grows, so in one
  process running 24 configurations each sees only what it adds above the
  previous high-water mark; measured around each timed fit, it grew by 0-1
  MiB for every configuration, the first included, since the warm-up epoch
  has already allocated what training needs. Per-configuration peaks need a
  fresh process per (backend, model, policy, source): 72 processes, each
  importing its backend (measured on 2 cores: about 5 s for JAX, 4 s for
  torch, 10 s for TensorFlow) and compiling its model: about 9-10 minutes in
  all, and over 4 minutes for TensorFlow alone even with `--quick`. So this
  script measures tracemalloc peaks, in one process per backend.

Ratios: `mixed/float32` is a mixed policy's median step time (and memory)
over the `float32` row's, same model and source; `kpe/Keras time` (on the
kpe row) is the median over rounds of kpe's step time over Keras's in the
same round, same model and policy. Values below 1 mean faster / smaller.
These are CPU timings of tiny models on a possibly shared machine: read
ratios within about +-10% as equal.

A configuration that raises (e.g. on JAX, `mixed_float16` training of
`transformer_block`: XLA on CPU does not support `dot_general` with precision
F16_F16_F32 in Keras 3.15.1) prints `error: <Type>` in its row.

Run from the repository root:

    python benchmarks/training.py                   # every importable backend
    python benchmarks/training.py --backend torch
    python benchmarks/training.py --quick           # smoke run
    python benchmarks/training.py --backend jax --models transformer_block

`--quick` runs 1 round of 1 epoch on 64 samples (2 steps). The script prints one
Markdown table; it reports what it measures and judges nothing (on CPU,
mixed precision is not expected to be faster). It exits with status 0
unless a backend's benchmark process crashed (then 1).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc

from per_backend import argument_parser, child_or_report, markdown_table, run_child, selected

MODELS = ("sequential_mlp", "functional_conv", "transformer_block", "embedding_lstm")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
SOURCES = ("kpe", "Keras")
BATCH_SIZE = 32
SAMPLES, QUICK_SAMPLES = 256, 64
EPOCHS, QUICK_EPOCHS = 3, 1
SEED = 0


def _build_and_compile(model_name: str, policy_name: str, source: str):
    import keras

    import keras_policy_ext as kpe
    from integration.builders import BUILDERS

    keras.utils.set_random_seed(SEED)
    policy_class = kpe.DTypePolicy if source == "kpe" else keras.DTypePolicy
    with kpe.config.policy_scope(policy_class(policy_name)):
        model = BUILDERS[model_name]()
    optimizer = keras.optimizers.Adam(1e-3)
    if source == "kpe":
        kpe.compile_model(model, optimizer, loss="mse")
    else:
        model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit_seconds(model, x, y, epochs: int) -> float:
    """Wall time of one `fit`, with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
        return time.perf_counter() - start
    finally:
        gc.enable()


def _peak_mib(model, x, y, epochs: int) -> float:
    """Peak of tracemalloc-traced allocations during one `fit`, in MiB."""
    gc.collect()
    tracemalloc.start()
    try:
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _measure_pair(model_name: str, policy_name: str, args: argparse.Namespace) -> dict:
    """{source: result} for one model and policy, kpe and Keras timed alternately."""
    from integration.builders import data

    samples, epochs = (QUICK_SAMPLES, QUICK_EPOCHS) if args.quick else (SAMPLES, EPOCHS)
    x, y = data(model_name, n=samples)
    steps = epochs * -(-samples // BATCH_SIZE)
    results, models = {}, {}
    for source in SOURCES:
        try:
            model = _build_and_compile(model_name, policy_name, source)
            model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)  # warm-up: compiles
            models[source] = model
            results[source] = {"round_ms": []}
        except Exception as error:  # reported in the table
            results[source] = {"error": type(error).__name__}
            print(f"{model_name} {policy_name} {source}: {error!r}", file=sys.stderr)
    for i in range(args.rounds):
        for source in SOURCES if i % 2 == 0 else SOURCES[::-1]:
            if source in models:
                seconds = _fit_seconds(models[source], x, y, epochs)
                results[source]["round_ms"].append(seconds / steps * 1e3)
    for source, model in models.items():
        results[source]["ms"] = statistics.median(results[source]["round_ms"])
        results[source]["mib"] = _peak_mib(model, x, y, epochs)
    if len(models) == len(SOURCES):
        per_round = zip(results["kpe"]["round_ms"], results["Keras"]["round_ms"])
        results["kpe"]["kpe_keras"] = statistics.median(k / r for k, r in per_round)
    return results


def measure(backend: str, args: argparse.Namespace) -> list[dict]:
    """This process's rows; Keras must already run on `backend`."""
    import keras

    assert keras.backend.backend() == backend, keras.backend.backend()
    results = {
        (model_name, policy_name): _measure_pair(model_name, policy_name, args)
        for model_name in args.models
        for policy_name in POLICIES
    }

    def ratio(a: dict, b: dict, key: str) -> str:
        if key in a and key in b and b[key] > 0:
            return f"{a[key] / b[key]:.2f}"
        return "-"

    rows = []
    for model_name in args.models:
        for policy_name in POLICIES:
            for source in SOURCES:
                result = results[model_name, policy_name][source]
                base = results[model_name, "float32"][source]
                mixed = policy_name != "float32"
                rows.append(
                    {
                        "backend": backend,
                        "model": model_name,
                        "policy": policy_name,
                        "source": source,
                        "ms": f"{result['ms']:.2f}" if "ms" in result else "-",
                        "memory": f"{result['mib']:.3f} MiB" if "mib" in result else "-",
                        "mixed_time": ratio(result, base, "ms") if mixed else "-",
                        "mixed_memory": ratio(result, base, "mib") if mixed else "-",
                        "kpe_keras": (
                            f"{result['kpe_keras']:.2f}" if "kpe_keras" in result else "-"
                        ),
                        "error": result.get("error"),
                    }
                )
    return rows


def _run_child(backend: str, args: argparse.Namespace) -> tuple[list[dict], bool]:
    """Runs `measure` for `backend` in a fresh process; its rows, and whether it ran."""
    flags = ["--rounds", str(args.rounds), "--models", *args.models]
    flags += ["--quick"] if args.quick else []
    rows, status = run_child(__file__, backend, flags)
    if rows is not None:
        return rows, True
    failure = dict.fromkeys(("policy", "source", "ms", "memory"), "-")
    failure.update(dict.fromkeys(("mixed_time", "mixed_memory", "kpe_keras"), "-"))
    failure.update(backend=backend, model="benchmark process")
    return [{**failure, "error": f"crashed (exit status {status})"}], False


def _table(rows: list[dict]) -> str:
    header = (
        "Backend",
        "Model",
        "Policy",
        "Source",
        "ms/step",
        "memory (tracemalloc peak)",
        "mixed/float32 time",
        "mixed/float32 memory",
        "kpe/Keras time",
    )
    keys = ("backend", "model", "policy", "source", "ms", "memory")
    ratios = ("mixed_time", "mixed_memory", "kpe_keras")
    cells = []
    for row in rows:
        line = [row[key] for key in keys]
        if row["error"]:
            line[4] = f"error: {row['error']}"
        cells.append(line + [row[key] for key in ratios])
    return markdown_table(header, cells)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run (1 round, 1 epoch of 64 samples)"
    )
    parser.add_argument("--rounds", type=int, help="timed fits per configuration (default 5)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    return child_or_report(_parse_args(argv), lambda args: measure(args.backend, args), _report)


def _report(args: argparse.Namespace) -> int:
    rows, crashed = [], False
    for backend in selected(args.backend):
        backend_rows, ran = _run_child(backend, args)
        rows += backend_rows
        crashed |= not ran
    print(_table(rows))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
