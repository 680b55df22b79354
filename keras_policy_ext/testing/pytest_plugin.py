"""pytest plugin (entry point `keras_policy_ext`): kpe fixtures.

- `kpe_policy`: runs a test once per policy (the `kpe_policies` ini option,
  default `keras_policy_ext.testing.DEFAULT_POLICIES`), inside that policy's
  scope, and yields the policy.
- `kpe_clean_state`: restores kpe's default policy, the plugin and `floatx`.

The plugin imports Keras only when tests are collected or a fixture runs,
so a `conftest.py` can still pick `KERAS_BACKEND` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "kpe_policies",
        "policies the kpe_policy fixture runs each test under",
        type="args",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kpe_policy" in metafunc.fixturenames:
        from keras_policy_ext.testing.checks import DEFAULT_POLICIES

        names = metafunc.config.getini("kpe_policies") or list(DEFAULT_POLICIES)
        metafunc.parametrize("kpe_policy", names, indirect=True)


@pytest.fixture
def kpe_clean_state() -> Iterator[None]:
    """Restores kpe's default policy, the plugin and `floatx` after a test."""
    from keras_policy_ext.testing.state import clean_state

    with clean_state():
        yield


@pytest.fixture
def kpe_policy(request: pytest.FixtureRequest, kpe_clean_state: None) -> Iterator[Any]:
    """The test's policy, in force (a `policy_scope`) while the test runs."""
    from keras_policy_ext import config

    with config.policy_scope(request.param) as policy:
        yield policy
