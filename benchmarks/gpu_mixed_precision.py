r"""Train-step throughput and peak device memory under mixed precision, kpe versus Keras.

Measures, in one process per backend (Keras reads `KERAS_BACKEND` once, at
import), two models built here from stock layers with the functional API:

- `transformer`: Embedding, then encoder blocks (MultiHeadAttention, Add,
  LayerNormalization, a Dense GELU feed-forward, Add, LayerNormalization),
  GlobalAveragePooling1D and a Dense head;
- `resnet`: a Conv2D / BatchNormalization / ReLU stem, then stages of
  residual blocks (two 3x3 Conv2D with BatchNormalization, a strided 1x1
  Conv2D shortcut where the shape changes, Add, ReLU), GlobalAveragePooling2D
  and a Dense head;

at the sizes of `SIZES` (GPU-sized; `--small`: tiny, for a CPU smoke run),
under the policies `float32`, `mixed_bfloat16` and `mixed_float16`, from two
sources, as in `training.py`:

- kpe: built in `kpe.config.policy_scope(kpe.DTypePolicy(name))`, compiled
  with `kpe.compile_model`;
- Keras: built in `kpe.config.policy_scope(keras.DTypePolicy(name))`,
  compiled with plain `model.compile`.

Each configuration builds a fresh model (same seed, so both sources start
from the same weights), compiles it with `keras.optimizers.Adam(1e-3)` and
`SparseCategoricalCrossentropy(from_logits=True)`, and trains it with `fit`
(`shuffle=False`) on S copies of one fixed random batch, S steps per `fit`
(10; 2 with `--small`):

- samples/s: after two warm-up `fit`s (the first traces / compiles the
  train step; the second runs once both sources' models are built, since on
  TensorFlow a model's first `fit` after another model's is slow), R rounds
  (default 6, 1 with `--small`; `--rounds`) each time one `fit`,
  ended by waiting for the device (JAX: the model's variables are ready;
  torch: `torch.cuda.synchronize()`; TensorFlow:
  `tf.test.experimental.sync_devices()`), with the garbage collector off;
  batch size over the median seconds per step. It includes `fit`'s own
  per-call and per-step host work, as training does. Within a round, the kpe
  and Keras models of the same model and policy run one after the other,
  the order swapping from one round to the next.
- peak MiB, on a GPU only: the device memory the configuration holds after
  its warm-up (bytes in use then, less bytes in use just before it was
  built: weights, optimizer state) plus the peak growth of bytes in use
  during one more `fit`, after the timed rounds. Bytes in use are those the
  framework's allocator has handed out (not its reserved pool, not the CUDA
  context), so the warm-up's transient memory (compilation, autotuning) is
  left out. torch: `torch.cuda.memory_allocated`, with
  `torch.cuda.reset_peak_memory_stats` before the `fit` and
  `torch.cuda.max_memory_allocated` after; TensorFlow:
  `tf.config.experimental.get_memory_info("GPU:0")`, with
  `reset_memory_stats("GPU:0")` before. JAX has no reset of its device's
  `peak_bytes_in_use`: before the `fit`, a ballast of 256 MiB buffers fills
  the gap between the process's peak so far and the bytes in use, so bytes
  in use equal the peak, and the peak after the `fit` exceeds it by exactly
  the growth during the `fit`; the ballast is freed after (so one process
  serves every configuration and kpe and Keras stay interleaved). The price:
  the process's JAX peak grows by each configuration's growth in turn, so
  the sum of the 12 growths must fit on the device (a memory error is
  reported in that row's cell, and the run goes on). On a CPU
  no backend reports device memory: the column says `n/a`.

Ratios: `kpe/Keras time` (on the kpe row) is the median over rounds of kpe's
step time over Keras's in the same round, `kpe/Keras mem` kpe's peak over
Keras's, same model and policy; `mixed/f32` is a mixed policy's median step
time (and peak) over the `float32` row's, same model and source. Below 1
means faster / smaller. A ratio that needs an errored row prints `-`, one
that needs device memory on a CPU `n/a`. `float32` means each backend's
default float32 math: on a GPU, JAX and TensorFlow use TF32 for float32
matrix products and convolutions, torch for convolutions only.

A configuration that raises (on JAX on a CPU, `mixed_float16` training of
the transformer: XLA does not support `dot_general` with precision
F16_F16_F32 there, in Keras 3.15.1) prints `error: <Type>` in its row.

Run from the repository root:

    python benchmarks/gpu_mixed_precision.py                    # every importable backend
    python benchmarks/gpu_mixed_precision.py --backend torch --models resnet
    python benchmarks/gpu_mixed_precision.py --small            # CPU smoke run, for tests

It prints, on stdout, a header (date, sizes, each backend's version and
device) and one Markdown table; on stderr, each model and policy's results
as they come. It exits with status 0 unless a backend's benchmark process
crashed (then 1).

On a lent GPU machine (an H200 here, no network; its `python3` has torch
and JAX with CUDA, no TensorFlow, no Keras): the repository travels, and the
benchmark processes find `keras_policy_ext` in it (`run_child` puts the
repository root on `PYTHONPATH`). Keras and the two of its dependencies the
machine lacks travel as wheels (the device tool's README.md), downloaded
beforehand into an ignored `.whl` (`echo /.whl/ >> .git/info/exclude`):

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0

then one run, carrying `.whl`, with `timeout_s` 600; the full sizes are
meant to take about 5-7 minutes for JAX and torch together (an estimate, not
yet measured), most of it JAX compiling 12 train steps:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
    nvidia-smi -L; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_mixed_precision.py \
        2>$OUT/progress.log | tee $OUT/gpu.md; tail -n 30 $OUT/progress.log

If it is stopped at the limit, `$OUT/progress.log` still holds the results
measured so far; if a backend's process crashes (say, Keras 3.15.1 on a newer
JAX), its error is there and the other backends still run.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable

from per_backend import argument_parser, child_or_report, markdown_table, run_child, selected

MODELS = ("transformer", "resnet")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
SOURCES = ("kpe", "Keras")
# Per model, full and --small: (batch size, builder arguments).
SIZES = {
    "transformer": {
        "full": (64, dict(seq=256, width=512, heads=8, ffn=2048, layers=4, vocab=8000)),
        "small": (8, dict(seq=16, width=32, heads=2, ffn=64, layers=2, vocab=64)),
    },
    "resnet": {
        "full": (128, dict(image=96, channels=(64, 128, 256), blocks=2)),
        "small": (8, dict(image=16, channels=(8, 16), blocks=1)),
    },
}
STEPS = {"full": 10, "small": 2}
CLASSES = 10
SEED = 0
BALLAST = 2**28  # bytes per JAX ballast buffer


def _transformer(seq: int, width: int, heads: int, ffn: int, layers: int, vocab: int):
    import keras

    kl = keras.layers

    tokens = keras.Input((seq,), dtype="int32")
    x = kl.Embedding(vocab, width)(tokens)
    for _ in range(layers):
        h = kl.MultiHeadAttention(heads, width // heads)(x, x)
        x = kl.LayerNormalization()(kl.Add()([x, h]))
        h = kl.Dense(width)(kl.Dense(ffn, activation="gelu")(x))
        x = kl.LayerNormalization()(kl.Add()([x, h]))
    return keras.Model(tokens, kl.Dense(CLASSES)(kl.GlobalAveragePooling1D()(x)))


def _resnet(image: int, channels: tuple[int, ...], blocks: int):
    import keras

    kl = keras.layers

    def conv_bn(x, filters: int, size: int = 3, strides: int = 1):
        x = kl.Conv2D(filters, size, strides, padding="same", use_bias=False)(x)
        return kl.BatchNormalization()(x)

    images = keras.Input((image, image, 3))
    x = kl.ReLU()(conv_bn(images, channels[0]))
    for stage, filters in enumerate(channels):
        for block in range(blocks):
            strides = 2 if stage and not block else 1
            h = conv_bn(kl.ReLU()(conv_bn(x, filters, strides=strides)), filters)
            shortcut = x if x.shape[-1] == filters else conv_bn(x, filters, 1, strides)
            x = kl.ReLU()(kl.Add()([shortcut, h]))
    return keras.Model(images, kl.Dense(CLASSES)(kl.GlobalAveragePooling2D()(x)))


BUILDERS = {"transformer": _transformer, "resnet": _resnet}


def _data(model_name: str, size: str):
    """`STEPS[size]` copies of one random batch: (inputs, integer labels)."""
    import numpy as np

    batch, kwargs = SIZES[model_name][size]
    rng = np.random.default_rng(SEED)
    if model_name == "transformer":
        x = rng.integers(0, kwargs["vocab"], (batch, kwargs["seq"]), dtype="int32")
    else:
        x = rng.standard_normal((batch, kwargs["image"], kwargs["image"], 3), dtype="float32")
    y = rng.integers(0, CLASSES, batch)
    return np.concatenate([x] * STEPS[size]), np.concatenate([y] * STEPS[size])


class _Device:
    """The backend's first device: a description, a barrier, and its memory on a GPU."""

    def __init__(self, backend: str):
        import keras

        self.backend = backend
        self.module = module = importlib.import_module(backend)
        if backend == "jax":
            self.jax_device = device = module.devices()[0]
            self.memory = device.platform != "cpu" and device.memory_stats() is not None
            name = device.device_kind
        elif backend == "torch":
            self.memory = module.cuda.is_available()
            name = module.cuda.get_device_name() if self.memory else "cpu"
            if self.memory:  # cuBLAS makes workspaces at its first products, kept for good
                for dtype in (module.float32, module.bfloat16, module.float16):
                    ones = module.ones(64, 64, dtype=dtype, device="cuda")
                    ones @ ones
        else:
            gpus = module.config.list_physical_devices("GPU")
            self.memory = bool(gpus)
            details = module.config.experimental.get_device_details(gpus[0]) if gpus else {}
            name = details.get("device_name", "GPU") if gpus else "cpu"
        if name == "cpu":
            name = f"cpu ({os.cpu_count()} cores)"
        if not self.memory:
            name += ", device memory n/a"
        self.description = f"{backend} {module.__version__}, keras {keras.__version__}: {name}"

    def sync(self, model) -> None:
        """Waits until the device has run all the work queued for `model`."""
        if self.backend == "jax":
            self.module.block_until_ready([v.value for v in model.variables])
        elif self.backend == "torch":
            if self.memory:
                self.module.cuda.synchronize()
        else:
            self.module.test.experimental.sync_devices()

    def in_use(self) -> int:
        """Bytes handed out by the framework's allocator on the device."""
        gc.collect()
        if self.backend == "jax":
            return self.jax_device.memory_stats()["bytes_in_use"]
        if self.backend == "torch":
            return self.module.cuda.memory_allocated()
        return self.module.config.experimental.get_memory_info("GPU:0")["current"]

    def peak_growth(self, run: Callable[[], object]) -> int:
        """Peak bytes in use during `run()`, above the bytes in use before it."""
        start = self.in_use()
        if self.backend == "jax":
            gap = self.jax_device.memory_stats()["peak_bytes_in_use"] - start
            zeros = self.module.numpy.zeros
            chunks = [BALLAST] * (gap // BALLAST) + [gap % BALLAST] * bool(gap % BALLAST)
            ballast = [zeros(n, "uint8") for n in chunks]
            self.module.block_until_ready(ballast)
            start = self.jax_device.memory_stats()["peak_bytes_in_use"]  # == bytes in use
        elif self.backend == "torch":
            self.module.cuda.reset_peak_memory_stats()
        else:
            self.module.config.experimental.reset_memory_stats("GPU:0")
        run()
        if self.backend == "jax":
            peak = self.jax_device.memory_stats()["peak_bytes_in_use"]
            del ballast
        elif self.backend == "torch":
            peak = self.module.cuda.max_memory_allocated()
        else:
            peak = self.module.config.experimental.get_memory_info("GPU:0")["peak"]
        return peak - start


def _build_and_compile(model_name: str, policy_name: str, source: str, size: str):
    import keras

    import keras_policy_ext as kpe

    keras.utils.set_random_seed(SEED)
    policy_class = kpe.DTypePolicy if source == "kpe" else keras.DTypePolicy
    with kpe.config.policy_scope(policy_class(policy_name)):
        model = BUILDERS[model_name](**SIZES[model_name][size][1])
    optimizer = keras.optimizers.Adam(1e-3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if source == "kpe":
        kpe.compile_model(model, optimizer, loss=loss)
    else:
        model.compile(optimizer=optimizer, loss=loss)
    return model


def _fit_seconds(model, x, y, batch: int, device: _Device) -> float:
    """Wall time of one `fit` and the device work it queued, with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        device.sync(model)
        return time.perf_counter() - start
    finally:
        gc.enable()


def _measure_pair(model_name: str, policy_name: str, device: _Device, args) -> dict:
    """{source: result} for one model and policy, kpe and Keras timed alternately."""
    size = "small" if args.small else "full"
    batch, steps = SIZES[model_name][size][0], STEPS[size]
    x, y = _data(model_name, size)
    fit = functools.partial(_fit_seconds, x=x, y=y, batch=batch, device=device)
    results, models = {}, {}
    for source in SOURCES:
        before = device.in_use() if device.memory else 0
        try:
            model = _build_and_compile(model_name, policy_name, source, size)
            fit(model)  # warm-up: traces / compiles
            models[source] = model
            results[source] = {"round_s": []}
            if device.memory:
                results[source]["resident"] = device.in_use() - before
        except Exception as error:  # reported in the table
            results[source] = {"error": type(error).__name__}
            print(f"{model_name} {policy_name} {source}: {error!r}", file=sys.stderr)
    for model in models.values():  # on TensorFlow, a first fit after another model's is slow
        fit(model)
    for i in range(args.rounds):
        for source in SOURCES if i % 2 == 0 else SOURCES[::-1]:
            if source in models:
                results[source]["round_s"].append(fit(models[source]) / steps)
    for source, model in models.items():
        result = results[source]
        result["s"] = statistics.median(result["round_s"])
        result["samples_s"] = batch / result["s"]
        if device.memory:
            try:
                growth = device.peak_growth(functools.partial(fit, model))
                result["mib"] = (result["resident"] + growth) / 2**20
            except Exception as error:  # e.g. out of memory: reported, the run goes on
                result["mib"] = f"error: {type(error).__name__}"
                print(f"{model_name} {policy_name} {source} memory: {error!r}", file=sys.stderr)
    if len(models) == len(SOURCES):
        per_round = zip(results["kpe"]["round_s"], results["Keras"]["round_s"])
        results["kpe"]["kpe_keras"] = statistics.median(k / r for k, r in per_round)
    return results


def _mib(result: dict) -> str:
    mib = result["mib"]
    return mib if isinstance(mib, str) else f"{mib:.1f}"


def _ratio(a: dict, b: dict, key: str) -> str:
    """`a[key] / b[key]`; `-` when either errored, `n/a` without device memory."""
    if "error" in a or "error" in b or isinstance(a.get(key), str) or isinstance(b.get(key), str):
        return "-"
    if key not in a:
        return "n/a"
    return f"{a[key] / b[key]:.2f}"


def _summary(pair: dict) -> str:
    """One model and policy's results, for the progress lines."""
    parts = []
    for source, result in pair.items():
        if "error" in result:
            parts.append(f"{source} error: {result['error']}")
        else:
            mib = f", {_mib(result)} MiB" if "mib" in result else ""
            parts.append(f"{source} {result['samples_s']:.1f} samples/s{mib}")
    return "; ".join(parts)


def measure(backend: str, args: argparse.Namespace) -> list[dict]:
    """This process's rows; Keras must already run on `backend`."""
    import keras

    assert keras.backend.backend() == backend, keras.backend.backend()
    device = _Device(backend)
    print(device.description, file=sys.stderr)
    results = {}
    for model_name in args.models:
        for policy_name in POLICIES:
            pair = results[model_name, policy_name] = _measure_pair(
                model_name, policy_name, device, args
            )
            print(f"{backend} {model_name} {policy_name}: {_summary(pair)}", file=sys.stderr)
    rows = []
    for (model_name, policy_name), pair in results.items():
        for source, result in pair.items():
            base, other = results[model_name, "float32"][source], pair["Keras"]
            mixed, kpe = policy_name != "float32", source == "kpe"
            error = result.get("error")
            rows.append(
                {
                    "backend": backend,
                    "model": model_name,
                    "policy": policy_name,
                    "source": source,
                    "samples_s": f"error: {error}" if error else f"{result['samples_s']:.1f}",
                    "mib": "-" if error else _mib(result) if device.memory else "n/a",
                    "kpe_keras_time": (
                        f"{result['kpe_keras']:.2f}" if "kpe_keras" in result else "-"
                    ),
                    "kpe_keras_mem": _ratio(result, other, "mib") if kpe else "-",
                    "mixed_time": _ratio(result, base, "s") if mixed else "-",
                    "mixed_mem": _ratio(result, base, "mib") if mixed else "-",
                    "device": device.description,
                }
            )
    return rows


HEADER = (
    "Backend",
    "Model",
    "Policy",
    "Source",
    "samples/s",
    "peak MiB",
    "kpe/Keras time",
    "kpe/Keras mem",
    "mixed/f32 time",
    "mixed/f32 mem",
)
KEYS = (
    "backend",
    "model",
    "policy",
    "source",
    "samples_s",
    "mib",
    "kpe_keras_time",
    "kpe_keras_mem",
    "mixed_time",
    "mixed_mem",
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid --rounds {text!r}: expected an integer >= 1")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument("--rounds", type=_positive, help="timed fits per configuration (default 6)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.small else 6  # even: kpe and Keras each run first in half
    return args


def main(argv: list[str] | None = None) -> int:
    return child_or_report(_parse_args(argv), lambda args: measure(args.backend, args), _report)


def _report(args: argparse.Namespace) -> int:
    size = "small" if args.small else "full"
    flags = ["--rounds", str(args.rounds), "--models", *args.models]
    flags += ["--small"] if args.small else []
    rows, devices, crashed = [], [], False
    for backend in selected(args.backend):
        backend_rows, status = run_child(__file__, backend, flags, stream_stderr=True)
        if backend_rows is None:
            devices.append(f"{backend}: benchmark process crashed (exit status {status})")
            crashed = True
        else:
            rows += [[row[key] for key in KEYS] for row in backend_rows]
            devices.append(backend_rows[0]["device"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steps = STEPS[size]
    print(f"{now}; {size} sizes; per configuration {args.rounds} timed fit(s) of {steps} steps")
    for model_name in args.models:
        batch, kwargs = SIZES[model_name][size]
        print(f"- {model_name}: batch {batch}, " + ", ".join(f"{k} {v}" for k, v in kwargs.items()))
    print("\n".join(f"- {line}" for line in devices) + "\n")
    print(markdown_table(HEADER, rows))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
