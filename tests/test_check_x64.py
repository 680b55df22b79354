"""`keras-policy-ext check` runs JAX's float64 cases in a second JAX process with x64 on.

The first tests replace the processes with recorded events (no backend runs);
the others start real JAX processes, whatever backend runs the tests here.
"""

import os
import textwrap

import pytest

from keras_policy_ext.backends import installed_backends
from keras_policy_ext.cli import matrix
from keras_policy_ext.cli.matrix import X64_CHILD, X64_NOTE, run_matrix
from keras_policy_ext.cli.runner import ChildResult

LAYERS = ["Dense", "Softmax"]
SOURCES = ["kpe", "keras"]
POLICIES = ["float32", "float64", "params=float64,compute=float32", "mixed_float16"]
FLOAT64 = ["float64", "params=float64,compute=float32"]


def events(child, stop_at=None):
    """What a child writes: per layer, per policy a start and a case per source."""
    found = []
    for layer in LAYERS:
        for policy in child.args["policies"]:
            found.append({"start": f"{layer} under {policy!r}"})
            if (layer, policy) == stop_at:
                return found
            for source in SOURCES:
                case = {"layer": layer, "policy": policy, "source": source, "findings": []}
                found.append({"case": case})
    return found


@pytest.fixture
def spawned(monkeypatch):
    """The children `run_matrix` asks for, answered with recorded events (all backends here)."""
    asked = {}
    crash = {}  # child name: (layer, policy) it dies at

    def run_children(module, children, *, on_line=None, on_tick=None, timeout=None, verbose=False):
        asked.update(children)
        results = {}
        for name, child in children.items():
            on_line(name, "kpe-progress 1/2")
            if name in crash:
                error = "exited with status 3 before finishing"
                results[name] = ChildResult(events(child, crash[name]), False, error, 1.0)
            else:
                results[name] = ChildResult(events(child), True, None, 2.0)
        return results

    monkeypatch.setattr(matrix, "run_children", run_children)
    monkeypatch.setattr(matrix, "installed_backends", lambda: ["jax", "tensorflow", "torch"])
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    return asked, crash


def test_float64_policies_run_in_a_jax_process_of_their_own_with_x64_on(spawned):
    asked, _ = spawned
    progress = []
    result = run_matrix(
        backends=["jax", "torch"], policies=POLICIES, layers=["Dense", "Softmax"],
        on_progress=lambda *line: progress.append(line),
    )  # fmt: skip
    assert list(asked) == ["jax", X64_CHILD, "torch"]
    assert asked["jax"].args["policies"] == ["float32", "mixed_float16"]
    assert "JAX_ENABLE_X64" not in asked["jax"].env
    assert asked[X64_CHILD].backend == "jax"
    assert asked[X64_CHILD].args["policies"] == FLOAT64
    assert asked[X64_CHILD].env == {"JAX_ENABLE_X64": "1"}
    assert asked[X64_CHILD].args["processes"] == 1  # no helper beside the first JAX process's
    assert asked["torch"].args["policies"] == POLICIES and not asked["torch"].env
    assert set(result.backends) == {"jax", "torch"}  # no new backend name in the report
    assert progress == [("jax", 1, 2), (X64_CHILD, 1, 2), ("torch", 1, 2)]
    # In the order one process gives: layer by layer, the policies in the order given.
    order = [(l, p, s) for l in LAYERS for p in POLICIES for s in SOURCES]
    for backend in ("jax", "torch"):
        cases = result.backends[backend]["cases"]
        assert [(c["layer"], c["policy"], c["source"]) for c in cases] == order
    assert result.backends["jax"]["notes"] == [X64_NOTE]
    assert result.backends["torch"]["notes"] == []
    assert result.status() == 0


def test_one_jax_process_when_x64_is_on_already_or_no_policy_is_float64(spawned, monkeypatch):
    asked, _ = spawned
    run_matrix(backends=["jax"], policies=["float32", "mixed_bfloat16"], layers=["Dense"])
    assert list(asked) == ["jax"]
    asked.clear()
    monkeypatch.setenv("JAX_ENABLE_X64", "true")
    result = run_matrix(backends=["jax"], policies=POLICIES, layers=["Dense"])
    assert list(asked) == ["jax"] and asked["jax"].args["policies"] == POLICIES
    assert result.backends["jax"]["notes"] == []


def test_float64_alone_runs_only_the_x64_process(spawned):
    asked, _ = spawned
    result = run_matrix(backends=["jax"], policies=["float64"], layers=["Dense"])
    assert list(asked) == [X64_CHILD]
    assert [c["policy"] for c in result.backends["jax"]["cases"]] == ["float64"] * 4


def test_a_failing_x64_process_fails_jax_and_keeps_what_finished(spawned):
    asked, crash = spawned
    crash[X64_CHILD] = ("Softmax", "float64")
    result = run_matrix(backends=["jax"], policies=POLICIES, layers=["Dense", "Softmax"])
    jax = result.backends["jax"]
    assert jax["error"] == (
        f"{X64_CHILD} process: exited with status 3 before finishing; "
        "it was checking Softmax under 'float64'"
    )
    assert result.status() == 2 and not jax["ok"]
    assert result.incomplete == [f"jax: {jax['error']}"]
    kept = [(c["layer"], c["policy"]) for c in jax["cases"] if c["source"] == "kpe"]
    assert kept == [
        ("Dense", "float32"), ("Dense", "float64"), ("Dense", "params=float64,compute=float32"),
        ("Dense", "mixed_float16"), ("Softmax", "float32"), ("Softmax", "mixed_float16"),
    ]  # fmt: skip


needs_jax = pytest.mark.skipif("jax" not in installed_backends(), reason="jax is not installed")

TARGETS = textwrap.dedent(
    """
    import os
    import keras
    import numpy as np
    import keras_policy_ext as kpe

    def _float64():
        return kpe.config.dtype_policy().compute_dtype == "float64"

    def probe():
        # Records each policy it is built under, with the process's JAX_ENABLE_X64.
        with open(os.environ["KPE_TEST_PROBE"], "a") as f:
            name = kpe.config.dtype_policy().name
            f.write(f"{name} {os.environ.get('JAX_ENABLE_X64')} {os.getpid()}\\n")
        return keras.layers.Dense(2), np.ones((2, 3), "float32")

    def dies_under_float64():
        if _float64():
            os._exit(3)
        return keras.layers.Dense(2), np.ones((2, 3), "float32")
    """
)


@pytest.fixture
def targets(tmp_path, monkeypatch):
    (tmp_path / "kpe_x64_targets.py").write_text(TARGETS)
    monkeypatch.syspath_prepend(str(tmp_path))  # found here, imported in the children
    path = os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("KPE_TEST_PROBE", str(tmp_path / "probe.txt"))
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    return tmp_path


@needs_jax
def test_jax_float64_cases_run_with_x64_on(targets):
    result = run_matrix(
        backends=["jax"], policies=["float64", "float32"], layers=["Dense"],
        targets=["kpe_x64_targets:probe"],
    )  # fmt: skip
    jax = result.backends["jax"]
    assert "error" not in jax, jax
    cases = [(c["layer"], c["policy"], c["source"]) for c in jax["cases"]]
    layers = ["Dense", "kpe_x64_targets:probe"]
    assert cases == [(l, p, s) for l in layers for p in ("float64", "float32") for s in SOURCES]
    findings = [(c["layer"], c["policy"], c["source"], c["findings"]) for c in jax["cases"]]
    assert not any(f for *_, f in findings), findings  # no "unsupported": float64 is held
    assert X64_NOTE in jax["notes"]
    assert result.status() == 0
    built = [line.split() for line in (targets / "probe.txt").read_text().splitlines()]
    assert {x64 for policy, x64, _ in built if policy == "float64"} == {"1"}
    first = {pid for policy, x64, pid in built if x64 != "1"}
    assert first and {p for p, x64, _ in built if x64 != "1"} == {"float32"}  # x64 off there
    assert not first & {pid for _, x64, pid in built if x64 == "1"}  # two processes


@needs_jax
def test_a_crashing_x64_process_is_jax_s_failure(targets):
    result = run_matrix(
        backends=["jax"], policies=["float32", "float64"],
        targets=["kpe_x64_targets:dies_under_float64"],
    )  # fmt: skip
    jax = result.backends["jax"]
    assert jax["error"].startswith(f"{X64_CHILD} process: exited with status 3"), jax["error"]
    assert "under 'float64'" in jax["error"]
    assert result.status() == 2
    assert [(c["policy"], c["source"]) for c in jax["cases"]] == [
        ("float32", "kpe"), ("float32", "keras"),
    ]  # fmt: skip
