"""The benchmark scripts run end to end (their numbers are not judged here)."""

import os
import pathlib
import subprocess
import sys

import keras

ROOT = pathlib.Path(__file__).parents[1]
BACKEND = keras.backend.backend()


def run(script: str, *flags: str, env: dict | None = None):
    """Runs `benchmarks/<script> *flags` on this backend; the result and its table rows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *flags, "--backend", BACKEND],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )  # fmt: skip
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {BACKEND} ")]
    return result, rows


def test_overhead_quick_run_prints_every_row():
    result, rows = run("overhead.py", "--quick")
    assert result.returncode == 0, result.stderr  # a missed target is reported, not an error
    missed = [row for row in rows if row.rstrip().endswith("| no |")]
    assert ("Missed targets:" in result.stdout) is bool(missed), result.stdout
    cases = {row.split("|")[2].strip() for row in rows}
    expected = {
        "Dense(64) call, mixed_bfloat16",
        "Dense(64) call, mixed_bfloat16, plugin installed",
        "convert_input",
    }
    if BACKEND == "jax":
        expected |= {"jaxpr casts, mixed_float16", "jaxpr casts, mixed_bfloat16"}
    assert cases == expected, result.stdout


# A sitecustomize that breaks every measurement process (`--child`), not the parent.
BREAK_CHILDREN = """
import sys

if "--child" in sys.argv:
    raise SystemExit("measurement process broken on purpose by the test")
"""


def test_overhead_exits_non_zero_when_a_measurement_process_breaks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BREAK_CHILDREN)
    path = os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))
    result, rows = run("overhead.py", "--quick", env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "broken on purpose" in result.stderr
    assert [row.split("|")[2].strip() for row in rows] == ["benchmark process"], result.stdout


def test_overhead_rejects_bad_arguments():
    result, _ = run("overhead.py", "--rounds", "0")
    assert result.returncode == 2 and "--rounds" in result.stderr, result.stderr


def test_training_quick_run_prints_every_row():
    # Two of the four models: every model runs the same timing code, and each
    # builder is trained under every policy in integration/test_parity.py.
    models = ("sequential_mlp", "functional_conv")
    result, rows = run("training.py", "--quick", "--models", *models)
    assert result.returncode == 0, result.stderr
    cells = [[cell.strip() for cell in row.split("|")[2:-1]] for row in rows]
    expected = {
        (model, policy, source)
        for model in models
        for policy in ("float32", "mixed_float16", "mixed_bfloat16")
        for source in ("kpe", "Keras")
    }
    assert len(cells) == 12 and {tuple(c[:3]) for c in cells} == expected, result.stdout
    for _, policy, source, ms, memory, *ratios in cells:
        assert float(ms) > 0 and memory.endswith(" MiB"), result.stdout
        mixed = [r != "-" for r in ratios[:2]]
        assert mixed == [policy != "float32"] * 2, result.stdout
        assert (ratios[2] != "-") is (source == "kpe"), result.stdout


def test_gpu_mixed_precision_small_run_prints_every_row():
    result, rows = run("gpu_mixed_precision.py", "--small")
    assert result.returncode == 0, result.stderr
    cells = [[cell.strip() for cell in row.split("|")[2:-1]] for row in rows]
    table = {tuple(row[:3]): row[3:] for row in cells}
    expected = {
        (model, policy, source)
        for model in ("transformer", "resnet")
        for policy in ("float32", "mixed_bfloat16", "mixed_float16")
        for source in ("kpe", "Keras")
    }
    assert len(rows) == 12 and set(table) == expected, result.stdout
    errored = {config for config, row in table.items() if row[0].startswith("error: ")}
    # XLA on CPU cannot train MultiHeadAttention under mixed_float16 (Keras 3.15.1)
    known = {("transformer", "mixed_float16", source) for source in ("kpe", "Keras")}
    assert errored <= (known if BACKEND == "jax" else set()), result.stdout

    def filled(cell: str, memory: bool) -> bool:  # device memory is "n/a" on a CPU
        return (memory and cell == "n/a") or float(cell) > 0

    for (model, policy, source), (speed, peak, *ratios) in table.items():
        pair = {(model, policy, "kpe"), (model, policy, "Keras")}
        versus_float32 = {(model, policy, source), (model, "float32", source)}
        applies = [source == "kpe" and not pair & errored] * 2
        applies += [policy != "float32" and not versus_float32 & errored] * 2
        assert (model, policy, source) in errored or float(speed) > 0, result.stdout
        assert peak == "-" if (model, policy, source) in errored else filled(peak, True), peak
        for cell, memory, apply in zip(ratios, (False, True) * 2, applies):
            assert filled(cell, memory) if apply else cell == "-", result.stdout


def test_import_time_run_prints_every_row():
    result, rows = run("import_time.py", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    cases = [row.split("|")[2].strip() for row in rows]
    assert cases == [
        "import keras_policy_ext (after keras)",
        "keras-policy-ext --version",
        "keras-policy-ext --help",
        "keras-policy-ext check --help",
    ], result.stdout
    for row in rows:  # no command row names a loaded backend: they import none
        assert "imports" not in row, row


def test_save_memory_small_run_prints_both_rows():
    result, rows = run("save_memory.py", "--megabytes", "4")
    assert result.returncode == 0, result.stderr
    cases = [row.split("|")[2].strip() for row in rows]
    assert len(cases) == 2 and cases[0].startswith("Keras's model.save"), result.stdout
    assert cases[1].startswith("kpe's rewrite"), result.stdout
