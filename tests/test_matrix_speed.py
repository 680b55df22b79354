"""What makes the matrix fast keeps what it finds: one float32 reference per layer,
host-side casts, and the backend's process settings (docs/benchmarks.md: "Check speed")."""

import importlib.util
import os
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import keras
import numpy as np
import pytest

from keras_policy_ext.cli import matrix
from keras_policy_ext.cli.matrix import (
    CHILD_ENV,
    JAX_CACHE_ENV,
    JAX_CACHE_ON,
    JAX_XLA_FLAG,
    JAX_XLA_FLAG_JAXLIB,
    _child_environment,
    check_here,
    run_matrix,
)
from keras_policy_ext.testing import check_layer

check_entry = matrix._check_entry

BACKEND = keras.backend.backend()
X = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")


def test_the_float32_reference_is_built_once_per_check():
    built = []

    def factory():
        built.append(1)
        return keras.layers.Dense(3)

    policies = ["float32", "float16", "bfloat16", "mixed_bfloat16"]
    report = check_layer(factory, X, policies, sources=("kpe", "keras"))
    # Each case has its own random kernel: a reference left with another case's
    # weights would miss by far more than the tolerance.
    assert report.ok, str(report)
    assert len(built) == len(report.cases) + 1  # each case's layer, and one reference


class Float32Fails(keras.layers.Layer):
    def call(self, x):
        if self.compute_dtype == "float32":
            raise ValueError("no float32 here")
        return x


def test_a_reference_that_cannot_be_built_is_a_finding_in_every_case():
    report = check_layer(Float32Fails, X, ["mixed_float16", "bfloat16"], sources=("kpe", "keras"))
    assert [(f.policy, f.source, f.check, f.seen, f.short) for f in report.findings] == [
        (policy, source, "numerics", "ValueError: no float32 here", "no reference")
        for policy in ("mixed_float16", "bfloat16")
        for source in ("kpe", "keras")
    ]


def matrix_findings(layers, policies):
    events = []
    check_here(layers, True, [], policies, ["kpe", "keras"], events.append)
    cases = [e["case"] for e in events if "case" in e]
    assert len(cases) == len(layers) * len(policies) * 2
    return {
        (c["layer"], c["policy"], c["source"], f["check"], f["short"])
        for c in cases
        for f in c["findings"]
    }


def test_the_matrix_keeps_the_findings_of_known_bad_layers():
    """As the full run found them before it was made fast (docs/check.md: findings per
    backend), under Keras's own policies; kpe's, with its fixes, have none."""
    policies = ["float16", "mixed_float16", "mixed_bfloat16"]
    expected = {
        ("CategoryEncoding", policy, "keras", check, short)
        for policy, compute in (("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16"))
        for check, short in (("output", "out float32"), ("symbolic", f"symbolic {compute}"))
    }
    if BACKEND == "tensorflow":  # DenseBincount has no half kernel
        expected.add(("CategoryEncoding", "float16", "keras", "call", "error InvalidArgumentError"))
    else:  # the orthogonal initializer's QR has no half kernel
        expected.add(("LSTM", "float16", "keras", "call", "error NotImplementedError"))
    assert matrix_findings(["CategoryEncoding", "LSTM"], policies) == expected


def events_of(layers, policies, processes=1):
    events = []
    check_here(layers, True, [], policies, ["kpe", "keras"], events.append, processes=processes)
    return events


def outcome(events):
    """What the parent reads from the events: notes, and the cases in order (names aside)."""
    return [
        (e["case"]["layer"], e["case"]["policy"], e["case"]["source"],
         [(f["check"], f["short"]) for f in e["case"]["findings"]])
        if "case" in e else e
        for e in events
        if "case" in e or "note" in e
    ]  # fmt: skip


LIGHT = ["Dense", "Softmax", "Activation", "Add", "Rescaling"]
POLICIES = ["float32", "float64", "mixed_bfloat16"]


@pytest.fixture
def main_checks(monkeypatch):
    """The layers this process checks itself; each one slowed down, so a helper takes some."""
    checked = []

    def slowly(name, *args):
        checked.append(name)
        time.sleep(2.5)  # longer than a helper takes to start, even on a busy machine
        return check_entry(name, *args)

    monkeypatch.setattr(matrix, "_check_entry", slowly)
    return checked


@pytest.mark.tools
def test_a_helper_process_changes_nothing_the_matrix_reports(main_checks):
    alone = outcome(events_of(LIGHT, POLICIES))
    main_checks.clear()
    shared = events_of(LIGHT, POLICIES, processes=2)
    assert outcome(shared) == alone
    assert 0 < len(main_checks) < len(LIGHT), main_checks  # the helper took the others
    starts = [e["start"] for e in shared if "start" in e]  # each as it began, in either process
    assert sorted(starts) == sorted(f"{n} under {p!r}" for n in LIGHT for p in POLICIES)


# A sitecustomize that breaks every helper process (their input is in kpe-helpers-*/).
BREAK_HELPERS = """
import sys

if sys.argv[1:2] and "kpe-helpers-" in sys.argv[1]:
    raise SystemExit(3)
"""


@pytest.mark.tools
def test_the_layers_of_a_helper_that_fails_are_checked_by_the_main_process(
    main_checks, monkeypatch, tmp_path
):
    (tmp_path / "sitecustomize.py").write_text(BREAK_HELPERS)
    path = os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))
    monkeypatch.setenv("PYTHONPATH", path)
    shared = events_of(LIGHT, POLICIES, processes=2)
    assert main_checks == LIGHT
    main_checks.clear()
    assert outcome(shared) == outcome(events_of(LIGHT, POLICIES))


@pytest.fixture
def bare_environment(monkeypatch):
    names = {n for env in CHILD_ENV.values() for n in env} | set(JAX_CACHE_ENV)
    for name in names | {"JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS", "JAX_ENABLE_X64"}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_backend_s_process_gets_its_settings_where_unset(bare_environment):
    bare_environment.setenv("OMP_NUM_THREADS", "3")  # set by the user: kept
    with _child_environment("torch"):
        assert os.environ["OMP_NUM_THREADS"] == "3"
        assert os.environ["MKL_NUM_THREADS"] == CHILD_ENV["torch"]["MKL_NUM_THREADS"]
        assert "JAX_COMPILATION_CACHE_DIR" not in os.environ


def jaxlib_verified():
    """Whether jaxlib is installed, in a version the XLA flag was verified with."""
    try:
        return version("jaxlib").startswith(JAX_XLA_FLAG_JAXLIB)
    except PackageNotFoundError:  # a one-backend env without JAX
        return False


def test_jax_s_process_compiles_into_a_cache_of_its_own_removed_at_its_end(bare_environment):
    with _child_environment("jax"):
        cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
        assert os.path.isdir(cache)
        assert {k: os.environ[k] for k in JAX_CACHE_ENV} == JAX_CACHE_ENV
        assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
        flags = os.environ.get("XLA_FLAGS", "")
        assert (JAX_XLA_FLAG in flags) is jaxlib_verified()
    assert not os.path.exists(cache)


def test_jax_settings_the_user_made_are_kept(bare_environment, tmp_path):
    bare_environment.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    bare_environment.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    with _child_environment("jax"):
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
        assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=true"
    assert tmp_path.is_dir()


@pytest.mark.tools
def test_the_command_s_process_loads_no_keras_to_check_names():
    """The default policies and zoo names are known without a backend (each backend's
    process loads its own): the run starts its backends' processes without that wait."""
    code = (
        "import sys\n"
        "from keras_policy_ext.cli.matrix import TargetError, run_matrix\n"
        "try:\n"
        "    run_matrix(layers=['NoSuchLayer'])\n"
        "except TargetError:\n"
        "    print(sorted(m for m in ('keras', 'jax', 'torch', 'tensorflow')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def findings_of(result):
    return sorted(
        (c["layer"], c["policy"], c["source"], f["check"], f["short"])
        for c in result.cases()
        for f in c["findings"]
    )


def test_every_jax_process_gets_the_cache_dir_over_the_user_s_settings():
    env = matrix.jax_cache_env("/c")
    assert env == {"JAX_COMPILATION_CACHE_DIR": "/c", **JAX_CACHE_ENV, **JAX_CACHE_ON}
    args = {"policies": ["mixed_float16", "float64"]}
    children = matrix._children(["jax", "torch"], args, ["float64"], env)
    assert set(children) == {"jax", matrix.X64_CHILD, "torch"}
    for name, child in children.items():
        if child.backend == "jax":  # its helper inherits the main process's environment
            assert {k: child.env[k] for k in env} == env, name
        else:
            assert "JAX_COMPILATION_CACHE_DIR" not in child.env
    assert children[matrix.X64_CHILD].env["JAX_ENABLE_X64"] == "1"


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="the cache is JAX's compilation cache: JAX's processes need JAX installed",
)
def test_a_cache_dir_keeps_jax_s_programs_for_the_next_run(bare_environment, tmp_path):
    """Both JAX processes (float64's, with x64, too) write their programs there, over
    the user's own JAX settings; a second run compiles nothing new and finds the same."""
    bare_environment.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "the_user_s"))
    bare_environment.setenv("JAX_ENABLE_COMPILATION_CACHE", "false")
    for policy in ("mixed_float16", "float64"):  # the first JAX process; the x64 one
        alone = tmp_path / policy
        result = run_matrix(backends=["jax"], layers=["Dense"], policies=[policy], cache_dir=alone)
        assert result.status() == 0 and os.listdir(alone), policy
    assert not (tmp_path / "the_user_s").exists()
    cache = tmp_path / "made" / "cache"  # made, parents too
    run = dict(backends=["jax"], layers=["Dense", "GRU"], policies=["mixed_float16", "float64"])
    first = run_matrix(**run, cache_dir=cache)
    assert first.status() == 0 and len(first.cases()) == 8
    kept = set(os.listdir(cache))
    assert f"JAX's compiled programs are kept in {cache}" in first.backends["jax"]["notes"]
    second = run_matrix(**run, cache_dir=str(cache))
    assert set(os.listdir(cache)) == kept
    assert findings_of(second) == findings_of(first)
    assert [c["layer"] for c in second.cases()] == [c["layer"] for c in first.cases()]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX installed")
def test_a_jax_process_stopped_with_a_cache_dir_says_the_cache_may_hold_a_cut_entry(tmp_path):
    result = run_matrix(backends=["jax"], layers=["Dense"], cache_dir=tmp_path, timeout=0.5)
    assert result.status() == 2 and "error" in result.backends["jax"]
    assert matrix.STOPPED_CACHE_NOTE.format(cache=tmp_path) in result.backends["jax"]["notes"]
    finished = run_matrix(backends=["jax"], layers=["Dense"], policies=["float16"],
                          cache_dir=tmp_path)  # fmt: skip
    assert finished.status() == 0 and not any(
        "did not finish" in note for note in finished.backends["jax"]["notes"]
    )


def test_a_cache_dir_that_cannot_be_a_directory_is_a_usage_error(tmp_path, monkeypatch):
    file = tmp_path / "a_file"
    file.write_text("")
    named = re.escape(f"cache directory '{file}' is a file")
    with pytest.raises(ValueError, match=named):
        run_matrix(backends=[BACKEND], layers=["Dense"], cache_dir=file)
    with pytest.raises(ValueError, match="cannot make cache directory"):
        run_matrix(backends=[BACKEND], layers=["Dense"], cache_dir=file / "below")
    with pytest.raises(ValueError, match="cache directory '' is empty"):  # not the cwd
        run_matrix(backends=[BACKEND], layers=["Dense"], cache_dir="")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root may write anywhere
        with pytest.raises(ValueError, match=re.escape(f"'{locked}' is not writable")):
            run_matrix(backends=[BACKEND], layers=["Dense"], cache_dir=locked)
    done = subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", "check", "--cache-dir", str(file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and f"cache directory '{file}' is a file" in done.stderr
    monkeypatch.setenv("HOME", str(tmp_path))
    assert matrix._cache_directory("~/kpe") == str(tmp_path / "kpe")  # `~` expanded, made
    assert (tmp_path / "kpe").is_dir()


@pytest.mark.tools
@pytest.mark.parametrize(
    "policies, loads_keras", [((), False), (("--policies", "float16"), False),
                              (("--policies", "p=f32,c=bf16"), True)],
)  # fmt: skip
def test_the_command_loads_keras_only_to_parse_a_policy_it_does_not_know(policies, loads_keras):
    """`keras-policy-ext check` itself imports Keras (and with it a backend) only for a
    policy name that needs Keras's parsing; the backends' processes do the rest."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_policy_ext", "check",
         "--backends", BACKEND, "--layers", "NoSuchLayer", *policies],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "no zoo layer matches NoSuchLayer" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert ("keras" in imported) is loads_keras, sorted(m for m in imported if "keras" in m)
