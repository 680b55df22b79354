"""`benchmarks/check_speed.py` runs end to end (its numbers are not judged here)."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

# The script's plumbing, the same on every backend: `tools` (tox.ini).
pytestmark = pytest.mark.tools
ROOT = pathlib.Path(__file__).parents[1]
BACKEND = keras.backend.backend()
SMALL = ("--layers", "Dense,Softmax", "--policies", "float32,mixed_bfloat16")


def run(*flags: str, env: dict | None = None):
    """Runs `benchmarks/check_speed.py *flags` on this backend; the result and its table rows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "check_speed.py"), *flags, "--backend", BACKEND],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )  # fmt: skip
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    return result, [[cell.strip() for cell in row] for row in rows]


def test_a_small_run_side_by_side_with_a_baseline_prints_every_table():
    # This checkout as its own baseline: both versions run, alone and together.
    result, rows = run(*SMALL, "--baseline", str(ROOT), "--top", "1")
    assert result.returncode == 0, result.stderr  # a missed target is reported, not an error
    full = [row for row in rows if row[0] in ("this", "baseline") and row[1] == "1"]
    assert [row[0] for row in full] == ["this", "baseline"], result.stdout
    for row in full:  # wall, CPU, this backend's process, 2 layers x 2 policies x 2 sources
        assert all(cell.endswith(" s") for cell in row[2:5]) and row[5] == "8", row
    alone = [row for row in rows if row[1] == BACKEND]
    assert [row[0] for row in alone] == ["this", "baseline"], result.stdout
    for row in alone:
        assert row[4] == "8" and row[5].endswith(" ms") and row[7].startswith("Softmax "), row
    targets = {row[0]: row[2] for row in rows if row[0].startswith(("this /", "findings"))}
    assert set(targets) == {"this / baseline <= 0.333", "findings identical to the baseline's"}
    assert targets["findings identical to the baseline's"] == "yes", result.stdout
    assert ("Missed targets:" in result.stdout) is ("no" in targets.values()), result.stdout
    assert "default run <= 45 s" not in result.stdout  # only the default run has that target


# A sitecustomize that breaks every backend's matrix process, not the driver.
BREAK_CHILDREN = """
import sys

if sys.argv[1:2] and sys.argv[1].endswith(".in.json"):  # python -m ...matrix IN OUT
    raise SystemExit("matrix process broken on purpose by the test")
"""


def test_a_run_whose_backend_process_breaks_exits_1(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BREAK_CHILDREN)
    path = os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))
    result, rows = run(*SMALL, "--no-alone", env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Runs that broke:" in result.stdout and "broken on purpose" in result.stdout
    (full,) = [row for row in rows if row[:2] == ["this", "1"]]
    assert full[5] == "0", result.stdout  # no case ran


def test_bad_arguments_are_a_usage_error(tmp_path):
    result, _ = run("--rounds", "0")
    assert result.returncode == 2 and "--rounds" in result.stderr, result.stderr
    result, _ = run("--baseline", str(tmp_path))
    assert result.returncode == 2 and "no keras_policy_ext package" in result.stderr


def test_warm_runs_the_script_end_to_end_with_an_untimed_warm_up_first():
    # A smoke test: whether JAX's processes use the cache is pinned in test_matrix_speed.
    result, rows = run(*SMALL, "--no-alone", "--warm")
    assert result.returncode == 0, result.stderr
    assert "filling JAX's cache: this ..." in result.stderr
    assert "(warm: JAX's compilation cache filled by an untimed run first)" in result.stdout
    full = [row for row in rows if row[0] == "this"]
    assert [row[1] for row in full] == ["1"] and full[0][5] == "8", result.stdout
