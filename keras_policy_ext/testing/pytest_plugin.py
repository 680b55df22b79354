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

The plugin is loaded into every pytest run of an environment where kpe is
installed, so it costs a run that does not use it nothing: every name it
adds is prefixed `kpe`, and it imports Keras only for a test that uses one
of its fixtures or its marker (so a `conftest.py` can still pick
`KERAS_BACKEND` first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
