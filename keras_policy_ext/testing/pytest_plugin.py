"""pytest plugin (entry point `keras_policy_ext`): kpe fixtures, and a suite per backend.

- `kpe_policy`: runs a test once per policy (the `kpe_policies` ini option,
  default `keras_policy_ext.testing.DEFAULT_POLICIES`), inside that policy's
  scope, and yields the policy. A policy the backend cannot honour
  (`kpe.validate`: float64 on JAX without x64) is skipped with the reason
  and the remedy, never run to a failure the test did not cause.
- `kpe_clean_state`: restores kpe's default policy, the plugin and `floatx`.
- `kpe_backend`: the name of the Keras backend the test runs on.
- `@pytest.mark.kpe_backends("jax", "torch")`: the test runs on those
  backends only, and is skipped with the reason on any other. (The marker
  was `backends` before; that name belongs to the projects that use it and
  kpe no longer reads it.)
- `pytest --kpe-backends=jax,torch,tensorflow` (or `all`, every installed
  backend): the selected tests once per backend, each backend in its own
  process, concurrently, with one merged report
  (`keras_policy_ext.testing.multibackend`: on pytest-xdist).
- `kpe_docs = README.md docs/*.md` (ini option, off by default): those
  Markdown and reST pages are tests, one per page, run as `keras-policy-ext
  doctest` runs them (`>>>` examples and prompt-less ```` ```python ````
  blocks; `kpe_docs_setup` is its `--setup`), on the backend of the run, so
  `pytest --kpe-backends=all` verifies the docs on every backend too.

The plugin is loaded into every pytest run of an environment where kpe is
installed, so it costs a run that does not use it nothing: every name it
adds is prefixed `kpe`, and it imports Keras only for a test that uses one
of its fixtures or its marker (so a `conftest.py` can still pick
`KERAS_BACKEND` first).
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keras_policy_ext.testing import multibackend

MARKER = "kpe_backends"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "kpe_policies",
        "policies the kpe_policy fixture runs each test under",
        type="args",
    )
    parser.addini(
        "kpe_docs",
        "Markdown and reST pages (paths or globs from the rootdir) run as tests, "
        "one per page, as `keras-policy-ext doctest` runs them",
        type="args",
    )
    parser.addini(
        "kpe_docs_setup",
        "Python code run in each kpe_docs page's namespace first (doctest --setup)",
    )
    group = parser.getgroup("keras-policy-ext")
    group.addoption(
        "--kpe-backends",
        dest="kpe_backends",
        metavar="BACKENDS",
        help="run the tests once per Keras backend, each in its own process, concurrently "
        "(pytest-xdist): comma-separated names of jax, tensorflow, torch, or 'all' "
        "(every installed backend)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): run the test only on these Keras backends; skipped on any other",
    )
    multibackend.configure_worker(config)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    multibackend.configure(config, os.environ)


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _marked_backends(item: pytest.Item) -> list[str] | None:
    """The names of the item's `kpe_backends` marker (None without one); `ValueError` if bad."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    from keras_policy_ext.backends import check_backends

    names = list(marker.args)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"@pytest.mark.{MARKER} needs one or more backend names, e.g. "
            f'@pytest.mark.{MARKER}("jax", "torch"); got {names!r}'
        )
    check_backends(names)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked for other backends is skipped, the reason naming them and this one."""
    for item in items:
        try:
            names = _marked_backends(item)
        except ValueError:
            continue  # pytest_runtest_setup makes it the test's error
        if names is not None and _backend() not in names:
            reason = f"runs on {', '.join(names)} only, not on {_backend()}"
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    _marked_backends(item)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kpe_policy" in metafunc.fixturenames:
        from keras_policy_ext.testing.checks import DEFAULT_POLICIES

        names = metafunc.config.getini("kpe_policies") or list(DEFAULT_POLICIES)
        metafunc.parametrize("kpe_policy", names, indirect=True)


@pytest.fixture(scope="session")
def kpe_backend() -> str:
    """The name of the Keras backend the tests run on (`keras.backend.backend()`)."""
    return _backend()


@pytest.fixture
def kpe_clean_state() -> Iterator[None]:
    """Restores kpe's default policy, the plugin and `floatx` after a test."""
    from keras_policy_ext.testing.state import clean_state

    with clean_state():
        yield


@pytest.fixture
def kpe_policy(request: pytest.FixtureRequest, kpe_clean_state: None) -> Iterator[Any]:
    """The test's policy, in force (a `policy_scope`) while the test runs.

    Skipped, with `kpe.validate`'s reason and remedy, where the backend
    cannot honour the policy (float64 on JAX without x64).
    """
    import keras_policy_ext as kpe
    from keras_policy_ext import config

    refused = kpe.validate(request.param)
    if not refused.ok:
        pytest.skip(refused.reason)
    with config.policy_scope(request.param) as policy:
        yield policy


DOC_SUFFIXES = (".md", ".markdown", ".rst", ".rest")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A page listed in `kpe_docs` is a test file with one test: its examples."""
    patterns = parent.config.getini("kpe_docs")
    if not patterns or file_path.suffix.lower() not in DOC_SUFFIXES:
        return None
    relative = file_path.relative_to(parent.config.rootpath).as_posix()
    if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
        return None
    return DocFile.from_parent(parent, path=file_path)


class DocFile(pytest.File):
    """A `kpe_docs` page."""

    def collect(self) -> Iterator[pytest.Item]:
        yield DocItem.from_parent(self, name=self.path.name)


class DocFailure(Exception):
    """A page's failed examples, its error, or that it had nothing to run."""


class DocItem(pytest.Item):
    """A page's examples, run by `keras-policy-ext doctest` on this run's backend.

    The command runs in its own process (it imports the page's code as a
    fresh script would, and a crash or hang is the page's failure, not the
    session's), with `KERAS_BACKEND` as this process has it.
    """

    def runtest(self) -> None:
        command = [sys.executable, "-m", "keras_policy_ext", "doctest", "--backends",
                   _backend(), "--format", "json", str(self.path)]  # fmt: skip
        setup = self.config.getini("kpe_docs_setup")
        if setup:
            command += ["--setup", setup]
        run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        try:
            [result] = next(iter(json.loads(run.stdout)["backends"].values()))
        except (ValueError, KeyError, StopIteration):
            message = f"keras-policy-ext doctest exited {run.returncode}:\n{run.stderr}"
            raise DocFailure(message) from None
        if result["error"]:
            raise DocFailure(f"{self.path.name}: ERROR: {result['error']}")
        if result["failed"]:
            raise DocFailure("".join(result["failures"]))
        if not result["examples"]:
            raise DocFailure(
                f"{self.path.name}: nothing to run: no >>> example and no ```python block"
            )
        if not result["attempted"]:
            pytest.skip(f"every example of {self.path.name} is skipped on {_backend()}")

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, DocFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"kpe doc {self.path.name}"
