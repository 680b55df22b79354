"""The pytest plugin: `kpe_policy` per policy; `--kpe-backends`, `backends`, `kpe_backend`."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.backends import BACKENDS, installed_backends

pytest_plugins = ["pytester"]

BACKEND = keras.backend.backend()
OTHER = next(b for b in BACKENDS if b != BACKEND)
needs_xdist = pytest.mark.skipif(
    importlib.util.find_spec("xdist") is None,
    reason="--kpe-backends runs on pytest-xdist (the test extra installs it)",
)


def test_kpe_policy_parametrizes_and_scopes(pytester):
    pytester.makeini("[pytest]\nkpe_policies = float32 mixed_bfloat16\n")
    pytester.makepyfile(
        """
        import keras
        import keras_policy_ext as kpe

        def test_layer(kpe_policy):
            assert isinstance(kpe_policy, kpe.DTypePolicy)
            assert keras.layers.Dense(2).dtype_policy == kpe_policy
            assert kpe.config.dtype_policy() is kpe_policy

        def test_state_is_restored_afterwards():
            assert kpe.config.dtype_policy().name == "float32"
        """
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*test_layer?float32? PASSED*", "*test_layer?mixed_bfloat16? PASSED*"]
    )


def test_default_policies_and_a_readable_failure(pytester):
    pytester.makepyfile(
        """
        import numpy as np
        import keras
        import keras_policy_ext as kpe

        class CastsToFloat32(keras.layers.Layer):
            def call(self, x):
                return keras.ops.cast(x, "float32")

        def test_conforms(kpe_policy):
            kpe.testing.assert_conforms(
                CastsToFloat32, np.ones((2, 3), "float32"), [kpe_policy], train=False)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # Only float32 conforms: every other default policy expects another dtype, except
    # float64 where the backend cannot honour it (JAX without x64): skipped, with why.
    refused = int(not kpe.validate("float64").ok)
    assert outcomes["passed"] == 1 and outcomes["failed"] == 5 - refused
    assert outcomes.get("skipped", 0) == refused
    result.stdout.fnmatch_lines(
        [
            "*ConformanceError*",
            "*CastsToFloat32 under kpe 'mixed_float16'*expected float16, saw output 0 is float32*",
        ]
    )


# --- One suite on every backend: `--kpe-backends`, `kpe_backends`, `kpe_backend` ---

SUITE = f"""
import keras
import pytest

def test_names_its_backend(kpe_backend):
    assert kpe_backend == keras.backend.backend()

@pytest.mark.kpe_backends("{BACKEND}")
def test_only_here():
    assert keras.backend.backend() == "{BACKEND}"

@pytest.mark.kpe_backends("{OTHER}")
def test_only_elsewhere():
    assert keras.backend.backend() == "{OTHER}"

def test_fails_on_{BACKEND}_only():
    assert keras.backend.backend() != "{BACKEND}"

@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(n):
    pass
"""


def test_backends_marker_and_kpe_backend_fixture_in_one_process(pytester):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=1, failed=1)
    result.stdout.fnmatch_lines([f"SKIPPED ?1? *.py:11: runs on {OTHER} only, not on {BACKEND}"])


def test_a_bad_backends_marker_is_an_error_naming_the_valid_ones(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kpe_backends("jaxx")
        def test_typo():
            pass

        @pytest.mark.kpe_backends()
        def test_empty():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*Unknown backend(s): 'jaxx'; valid backends: jax, tensorflow, torch.*",
            "*@pytest.mark.kpe_backends needs one or more backend names*",
        ]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kpe-backends=theano"], "Unknown backend(s): 'theano'"),
        (["--kpe-backends="], "--kpe-backends needs"),
        (["--kpe-backends=all", "-p", "no:xdist"], "--kpe-backends runs on pytest-xdist"),
    ],
)
def test_kpe_backends_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.tools
@needs_xdist
def test_kpe_backends_conflicts_with_other_xdist_options(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--kpe-backends=all", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot be combined with -n" in result.stderr.str()


@pytest.mark.tools
@needs_xdist
def test_kpe_backends_runs_the_suite_once_per_backend(pytester):
    backends = installed_backends()
    pytester.makepyfile(SUITE)
    report = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "--kpe-backends=all", "-p", "no:cacheprovider", "-rfs", f"--junitxml={report}"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # test_fails_on_{BACKEND}_only
    # one merged summary: a line per backend, failures labelled with theirs
    lines = result.stdout.str().splitlines()
    for backend in backends:
        passed = 3 + (backend == BACKEND) + (backend == OTHER) + (backend != BACKEND)
        failed = int(backend == BACKEND)
        skipped = (backend != BACKEND) + (backend != OTHER)
        counts = f"{passed} passed, {failed} failed, {skipped} skipped"
        assert any(l.split(None, 1) == [backend, counts] for l in lines), (counts, lines[-15:])
    result.stdout.fnmatch_lines([f"FAILED *::test_fails_on_{BACKEND}_only@{BACKEND}*"])
    result.stdout.fnmatch_lines([f"SKIPPED *.py:*: runs on {OTHER} only, not on {BACKEND}"])
    # the JUnit report: every test once per backend, the backend in its name
    cases = {c.get("name"): c for c in ET.parse(report).iter("testcase")}
    for backend in backends:
        for test in ("test_names_its_backend", "test_only_here", "test_only_elsewhere",
                     f"test_fails_on_{BACKEND}_only"):  # fmt: skip
            assert f"{test}@{backend}" in cases, sorted(cases)
        assert cases[f"test_names_its_backend@{backend}"].find("*") is None  # passed
        here = cases[f"test_only_here@{backend}"].find("skipped")
        assert (here is None) == (backend == BACKEND)
        failed = cases[f"test_fails_on_{BACKEND}_only@{backend}"].find("failure")
        assert (failed is not None) == (backend == BACKEND)
        # the backend joins a parametrized test's id inside its brackets
        assert {f"test_parametrized[1@{backend}]", f"test_parametrized[2@{backend}]"} <= set(cases)
    assert len(cases) == 6 * len(backends)


@pytest.mark.tools
@needs_xdist
def test_a_backend_s_crash_is_its_failure_and_its_worker_goes_on(pytester):
    pytester.makepyfile(
        f"""
        import os
        import keras

        def test_crash():
            if keras.backend.backend() == "{BACKEND}":
                os._exit(3)

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--kpe-backends=all", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*worker '{BACKEND}' crashed while running*test_crash*"])
    counts = "1 passed, 1 failed, 0 skipped"
    assert any(l.split(None, 1) == [BACKEND, counts] for l in result.stdout.lines)


# --- A good citizen: what the plugin costs a project that does not use it (issue 22) ---

OWN_MARKER = """
import pytest

@pytest.mark.backends("sqlite")
def test_sqlite():
    pass

@pytest.mark.backends("sqlite", "postgres")
def test_both():
    pass
"""


def outcomes_with_and_without_kpe(pytester, *args):
    """The run with the plugin and with `-p no:keras_policy_ext`, each in a fresh process."""
    runs = [
        pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra, *args)
        for extra in ((), ("-p", "no:keras_policy_ext"))
    ]
    return runs


def test_a_project_s_own_backends_marker_is_left_alone(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    backends(*names): the project's databases\n")
    pytester.makepyfile(OWN_MARKER)
    with_kpe, without = outcomes_with_and_without_kpe(pytester, "--strict-markers")
    without.assert_outcomes(passed=2)
    with_kpe.assert_outcomes(passed=2)
    assert with_kpe.ret == without.ret == pytest.ExitCode.OK


def test_a_project_that_never_mentions_kpe_runs_as_without_it(pytester):
    pytester.makeconftest(
        """
        import sys

        def pytest_collection_finish(session):
            print("keras imported at collection:", "keras" in sys.modules)
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n):
            assert n

        def test_fails():
            assert False

        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass
        """
    )
    with_kpe, without = outcomes_with_and_without_kpe(pytester, "-s")
    assert with_kpe.parseoutcomes() == without.parseoutcomes()
    assert with_kpe.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    with_kpe.stdout.fnmatch_lines(["*keras imported at collection: False*"])
    collected = [
        pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", *extra)
        for extra in ((), ("-p", "no:keras_policy_ext"))
    ]
    ids = [[l for l in run.stdout.lines if "::" in l] for run in collected]
    assert ids[0] == ids[1] and len(ids[0]) == 4


def test_the_kpe_backends_marker_limits_a_test_the_old_name_is_not_read(pytester):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.kpe_backends("{OTHER}")
        def test_elsewhere():
            pass

        @pytest.mark.backends("{OTHER}")  # not kpe's: an unknown marker, as without kpe
        def test_old_name():
            pass
        """
    )
    result = pytester.runpytest("-v", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*::test_elsewhere SKIPPED*", "*::test_old_name PASSED*"])
    result.stdout.fnmatch_lines([f"SKIPPED ?1? *: runs on {OTHER} only, not on {BACKEND}"])


# --- Fixtures that hold on every backend (issue 22) ---


def test_kpe_policy_float64_on_jax_without_x64_is_skipped_with_the_remedy(pytester):
    pytester.makepyfile(
        """
        import numpy as np
        import keras

        def test_dense(kpe_policy):
            y = keras.layers.Dense(2)(np.ones((1, 3), "float32"))
            assert keras.backend.standardize_dtype(y.dtype) == kpe_policy.compute_dtype
        """
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    if kpe.validate("float64").ok:  # torch, tensorflow, JAX with x64: float64 runs
        result.assert_outcomes(passed=6)
    else:
        result.assert_outcomes(passed=5, skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED*'float64' on jax: x64 is disabled*JAX_ENABLE_X64=1*"])


# --- An honest fan-out (issue 22) ---


@pytest.mark.tools
@needs_xdist
def test_an_interrupted_fan_out_says_what_did_not_finish(pytester, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    pytester.makepyfile(
        test_slow=f"""
        import os, time
        import keras

        def test_first():
            pass

        def test_slow():
            open(os.path.join({str(started)!r}, keras.backend.backend()), "w").close()
            time.sleep(300)

        def test_after():
            pass
        """
    )
    # ^C as a terminal sends it: SIGINT to the whole foreground process group.
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--kpe-backends=all", "-p", "no:cacheprovider"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    backends = installed_backends()
    deadline = time.monotonic() + 300
    while len(os.listdir(started)) < len(backends):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "test_slow never started on every backend"
        time.sleep(0.5)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, out + err
    assert "passed on every backend" not in out
    assert "kpe backends: interrupted" in out, out
    for backend in backends:
        line = (
            f"{backend} 1 passed, 0 failed, 0 skipped; not finished: "
            "test_slow.py::test_slow, test_slow.py::test_after"
        )
        assert line in [" ".join(l.split(None, 1)) for l in out.splitlines()], out
    assert "Traceback" not in out + err


@pytest.mark.tools
@needs_xdist
def test_a_backend_where_no_test_ran_is_not_passed(pytester):
    pytester.makepyfile(
        f"""
        import keras, pytest

        if keras.backend.backend() == "{BACKEND}":
            pytest.skip("nothing for {BACKEND}", allow_module_level=True)

        def test_elsewhere():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--kpe-backends=all", "-p", "no:cacheprovider")
    assert "passed on every backend" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*kpe backends: no test ran on {BACKEND}*"])


# --- Docs in the test suite: the `kpe_docs` ini option (issue 22) ---

PAGES = {
    "good.md": "# Good\n\n```python\nimport keras\nx = keras.ops.ones((2, 3))\n```\n\n"
    "```python\nassert tuple(x.shape) == (2, 3)\n```\n",
    "bad.md": "# Bad\n\n```python\nraise ValueError('from the page')\n```\n",
    "prose.md": "# Prose only\n\n```bash\npip install it\n```\n",
    "notes.md": "# Not listed in kpe_docs\n\n```python\nraise RuntimeError\n```\n",
}


@pytest.mark.tools
def test_kpe_docs_collects_the_listed_pages_as_tests(pytester):
    pytester.makeini("[pytest]\nkpe_docs = good.md bad.md prose.md\n")
    for name, text in PAGES.items():
        pytester.makefile(".md", **{name[:-3]: text})
    result = pytester.runpytest("-v", "-p", "no:cacheprovider", ".")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*good.md::good.md PASSED*",
            '*bad.md", line 4, in <module>*',
            "*ValueError: from the page*",
            "*prose.md*nothing to run*",
        ]
    )
    assert "notes.md" not in result.stdout.str()


def test_without_kpe_docs_no_page_is_collected(pytester):
    for name, text in PAGES.items():
        pytester.makefile(".md", **{name[:-3]: text})
    result = pytester.runpytest("-p", "no:cacheprovider", ".")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.tools
@needs_xdist
def test_kpe_docs_run_once_per_backend_under_kpe_backends(pytester):
    pytester.makeini("[pytest]\nkpe_docs = good.md\n")
    pytester.makefile(".md", good=PAGES["good.md"])
    result = pytester.runpytest_subprocess("--kpe-backends=all", "-p", "no:cacheprovider", ".")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    for backend in installed_backends():
        line = f"{backend} 1 passed, 0 failed, 0 skipped"
        assert line in [" ".join(l.split(None, 1)) for l in result.stdout.lines]
