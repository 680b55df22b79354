"""The Keras backends kpe supports, found without importing Keras or any backend.

>>> from keras_policy_ext.backends import BACKENDS, installed_backends
>>> BACKENDS
('jax', 'tensorflow', 'torch')
>>> import keras
>>> keras.backend.backend() in installed_backends()
True
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

BACKENDS = ("jax", "tensorflow", "torch")


def installed_backends() -> list[str]:
    """The backends importable here, in `BACKENDS` order, none of them imported."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def check_backends(backends: Sequence[str]) -> None:
    """Raises `ValueError` naming any unknown backend name and the valid ones.

    >>> from keras_policy_ext.backends import check_backends
    >>> check_backends(["jax", "theano"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown backend(s): 'theano'; valid backends: jax, tensorflow, torch.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(
            f"Unknown backend(s): {', '.join(map(repr, unknown))}; valid "
            f"backends: {', '.join(BACKENDS)}."
        )
