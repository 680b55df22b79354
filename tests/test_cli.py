"""`keras-policy-ext`: exit codes, formats, targets, skipped backends, doctest."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.cli import main
from keras_policy_ext.cli.quiet import is_native_log

BACKEND = keras.backend.backend()
ONE = ["--backends", BACKEND, "--policies", "float32,mixed_bfloat16"]

TARGETS = textwrap.dedent(
    """
    import keras
    import numpy as np

    class CastsToFloat32(keras.layers.Layer):
        def call(self, x):
            return keras.ops.cast(x, "float32")

    def wrong():
        return CastsToFloat32(), np.ones((2, 3), "float32")

    def good():
        return keras.layers.Dense(2), np.ones((2, 3), "float32")

    def not_a_pair():
        return keras.layers.Dense(2)

    def broken():
        raise RuntimeError("cannot build")
    """
)


def cli(*args, tmp_path=None):
    env = dict(os.environ)
    if tmp_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip


@pytest.fixture
def targets(tmp_path):
    (tmp_path / "kpe_cli_targets.py").write_text(TARGETS)
    return tmp_path


def test_version_and_info(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert kpe.__version__ in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"backend          {BACKEND}" in out and keras.__version__ in out


def grid(stdout: str) -> list[list[str]]:
    """The rows of the first table under the summary, kpe's (header and rule left out)."""
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.split()[:2] == ["layer", "policy"])
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return [l.split() for l in lines[start + 2 : end]]


def test_check_zoo_layers_that_conform_exits_0():
    result = cli("check", *ONE, "--layers", "Dense,Softmax", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CONFORMS: 8 cases on " + BACKEND)  # kpe and keras, summary first
    rows = grid(result.stdout)
    assert {(r[0], r[1]) for r in rows} == {
        (layer, policy)
        for layer in ("Dense", "Softmax")
        for policy in ("float32", "mixed_bfloat16")
    }
    assert all(r[2] == "ok" for r in rows)
    quiet = cli("check", *ONE, "--layers", "Dense,Softmax")  # without --all: no row is bad
    assert quiet.returncode == 0 and "layer" not in quiet.stdout.split()
    assert "No case has findings or was refused" in quiet.stdout
    # The backend's native logs (TensorFlow's, XLA's) never reach the terminal.
    for run in (result, quiet):
        noisy = [l for l in (run.stdout + run.stderr).splitlines() if is_native_log(l)]
        assert not noisy, noisy


def test_check_a_wrong_target_exits_1_and_names_the_deviation(targets):
    result = cli("check", "kpe_cli_targets:wrong", *ONE, tmp_path=targets)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("DOES NOT CONFORM")
    (row,) = grid(result.stdout)  # only the row with findings
    assert row[:2] == ["kpe_cli_targets:wrong", "mixed_bfloat16"]
    assert "out float32" in " ".join(row)


@pytest.mark.tools
@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_module_kpe:make", "cannot import 'no_such_module_kpe'"),
        ("kpe_cli_targets:missing", "has no attribute 'missing'"),
        ("kpe_cli_targets", "expected 'module:callable'"),
        ("kpe_cli_targets:not_a_pair", "must return (layer, inputs)"),
        ("kpe_cli_targets:broken", "failed to build: RuntimeError: cannot build"),
    ],
)
def test_a_target_that_cannot_be_imported_or_built_exits_2(targets, target, message):
    result = cli("check", target, *ONE, tmp_path=targets)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


@pytest.mark.tools
def test_usage_errors_exit_2():
    assert cli("check", "--backends", "nope").returncode == 2
    result = cli("check", "--backends", BACKEND, "--layers", "NoSuchLayer")
    assert result.returncode == 2 and "no zoo layer matches NoSuchLayer" in result.stderr
    result = cli("check", "--backends", BACKEND, "--layers", "Dense", "--policies", "float33")
    assert result.returncode == 2 and "float33" in result.stderr


@pytest.mark.tools
def test_json_and_junit_formats_and_output_file(targets, tmp_path):
    out = tmp_path / "report.json"
    result = cli("check", "kpe_cli_targets:wrong", *ONE, "--format", "json",
                 "--output", str(out), tmp_path=targets)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.startswith("DOES NOT CONFORM")  # only the summary
    data = json.loads(out.read_text())
    assert data["ok"] is False
    cases = data["backends"][BACKEND]["cases"]
    assert {(c["policy"], c["source"], bool(c["findings"])) for c in cases} == {
        ("float32", "kpe", False), ("float32", "keras", False),
        ("mixed_bfloat16", "kpe", True), ("mixed_bfloat16", "keras", True),
    }  # fmt: skip
    result = cli("check", "kpe_cli_targets:wrong", *ONE, "--format", "junit", tmp_path=targets)
    suite = ET.fromstring(result.stdout).find("testsuite")
    assert suite.get("name") == BACKEND
    # kpe's case fails; Keras's own (the comparison) is skipped, with its findings
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    failure = suite.find("testcase/failure")
    assert "output: expected bfloat16, saw output 0 is float32" in failure.text
    result = cli("check", "kpe_cli_targets:wrong", *ONE, "--format", "junit", "--fail-on-keras",
                 tmp_path=targets)  # fmt: skip
    suite = ET.fromstring(result.stdout).find("testsuite")
    assert (suite.get("failures"), suite.get("skipped")) == ("2", "0")


@pytest.mark.tools
def test_backends_not_installed_are_listed_as_skipped():
    result = cli("check", "--layers", "Softmax", "--policies", "float32", "--kpe-only", "--all")
    missing = [b for b in ("jax", "tensorflow", "torch") if importlib.util.find_spec(b) is None]
    for backend in missing:
        assert f"{backend} ({backend} is not installed)" in result.stdout
    header = next(l for l in result.stdout.splitlines() if l.startswith("layer"))
    assert header.split() == ["layer", "policy", "jax", "tensorflow", "torch"]
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_doctest_command(tmp_path):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text(">>> 1 + 1\n2\n")
    bad.write_text(">>> 1 + 1\n3\n")
    ok = cli("doctest", "--backends", BACKEND, str(good))
    assert ok.returncode == 0 and f"{BACKEND}: 1 passed" in ok.stdout
    failed = cli("doctest", "--backends", BACKEND, str(good), str(bad))
    assert failed.returncode == 1 and "FAILED" in failed.stdout


@pytest.mark.parametrize(
    "backends",
    [
        {},  # no backend at all
        {"jax": {"skipped": "jax is not installed"}},  # every backend skipped
        {BACKEND: {"ok": True, "cases": []}},  # a backend that ran no case
    ],
    ids=["no-backend", "all-skipped", "zero-cases"],
)
def test_zero_cases_run_is_never_a_pass(backends):
    from keras_policy_ext.cli.formats import summary
    from keras_policy_ext.cli.matrix import MatrixResult

    result = MatrixResult(backends, 0.1)
    assert not result.ok
    assert result.status() == 2 and summary(result).startswith("INCOMPLETE")


def test_a_backend_that_failed_to_run_is_not_a_pass():
    from keras_policy_ext.cli.matrix import MatrixResult

    case = {"layer": "Dense", "policy": "float32", "source": "kpe", "backend": BACKEND}
    ran = {"ok": True, "cases": [{**case, "findings": []}]}
    assert MatrixResult({BACKEND: ran}, 0.1).ok
    assert not MatrixResult({BACKEND: ran, "other": {"error": "exit status 1"}}, 0.1).ok


def test_a_refusal_is_reported_with_its_reason_and_is_not_a_finding():
    from keras_policy_ext.cli import formats
    from keras_policy_ext.cli.matrix import MatrixResult

    reason = "keras_policy_ext refuses Dense 'd' under policy 'float64' on the jax backend: x64"
    cases = [
        {"layer": "Dense", "policy": "float64", "source": "kpe", "findings": [], "refused": reason},
        {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []},
    ]
    result = MatrixResult({"jax": {"cases": cases}}, 1.0)
    assert result.status() == 0
    text = formats.table(result)
    assert text.startswith("CONFORMS") and "1 refused" in text
    assert "Dense  float64  refused" in text
    assert f"Refused:\n- Dense under 'float64' on jax: {reason}" in text
    assert f"- Dense under 'float64' on jax: {reason}" in formats.markdown(result)
    assert "Dense  float32" not in text  # an ok row stays out (--all prints it)


def _case(source, findings=()):
    from keras_policy_ext.testing.checks import CaseResult, Finding

    found = tuple(
        Finding("Dense", "float16", source, BACKEND, "output", "float16", "output 0 is float32", s)
        for s in findings
    )
    return dataclasses.asdict(CaseResult("Dense", "float16", source, BACKEND, found))


def test_json_and_junit_give_each_backend_the_run_s_verdict():
    from keras_policy_ext.cli.formats import junit, to_json
    from keras_policy_ext.cli.matrix import MatrixResult

    cases = [_case("kpe"), _case("keras", ["out float32"])]
    ran = {"cases": cases, "notes": [], "seconds": 1.0, "ok": True}
    result = MatrixResult({BACKEND: ran}, 1.0)
    for fail_on_keras in (False, True):
        data = json.loads(to_json(result, fail_on_keras=fail_on_keras))
        assert data["ok"] is data["backends"][BACKEND]["ok"] is (not fail_on_keras)
    assert result.backends[BACKEND]["ok"] is True  # the result itself is left as it was
    # A backend where no case ran (every layer noted as unavailable) is an error, noted.
    note = "TorchModuleWrapper runs on torch only"
    empty = MatrixResult({BACKEND: {"cases": [], "notes": [note], "seconds": 1.0, "ok": True}}, 1)
    suite = ET.fromstring(junit(empty)).find("testsuite")
    assert suite.get("errors") == "1"
    assert suite.find("testcase/error").get("message") == f"no case ran on {BACKEND}"
    assert suite.find("system-out").text == note
    assert json.loads(to_json(empty))["backends"][BACKEND]["ok"] is False


def test_policies_option_splits_role_specs_by_role_whatever_the_key_s_spelling():
    from keras_policy_ext.cli import _policies

    assert _policies("p=f32,c=bf16,params=float16,compute=float16") == [
        "p=f32,c=bf16", "params=float16,compute=float16",
    ]  # fmt: skip
    assert _policies("compute=bf16,c=f16,o=f32") == ["compute=bf16", "c=f16,o=f32"]
    assert _policies("float32,p=f32,c=bf16,mixed_float16") == [
        "float32", "p=f32,c=bf16", "mixed_float16",
    ]  # fmt: skip
