"""The benchmark scripts run end to end (their numbers are not judged here)."""

import pathlib
import subprocess
import sys

import keras

ROOT = pathlib.Path(__file__).parents[1]


def test_overhead_quick_run_prints_every_row():
    backend = keras.backend.backend()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"),
         "--quick", "--backend", backend],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: a target missed
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {backend} ")]
    cases = {row.split("|")[2].strip() for row in rows}
    expected = {"Dense(64) call, mixed_bfloat16", "convert_input"}
    if backend == "jax":
        expected |= {"jaxpr casts, mixed_float16", "jaxpr casts, mixed_bfloat16"}
    assert cases == expected, result.stdout


def test_training_quick_run_prints_every_row():
    backend = keras.backend.backend()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "training.py"),
         "--quick", "--backend", backend],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {backend} ")]
    configs = [tuple(cell.strip() for cell in row.split("|")[2:5]) for row in rows]
    expected = {
        (model, policy, source)
        for model in ("sequential_mlp", "functional_conv", "transformer_block", "embedding_lstm")
        for policy in ("float32", "mixed_float16", "mixed_bfloat16")
        for source in ("kpe", "Keras")
    }
    assert len(configs) == 24 and set(configs) == expected, result.stdout
