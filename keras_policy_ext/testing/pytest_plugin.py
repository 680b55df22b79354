"""pytest plugin (entry point `keras_policy_ext`): kpe fixtures.

It imports Keras only when a fixture is used, so that a `conftest.py` can
still pick `KERAS_BACKEND` before Keras is first imported.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def kpe_clean_state() -> Iterator[None]:
    """Restores kpe's default policy, the plugin and `floatx` after a test."""
    from keras_policy_ext.testing.state import clean_state

    with clean_state():
        yield
