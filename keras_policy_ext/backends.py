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
import os
from collections.abc import Mapping, Sequence

BACKENDS = ("jax", "tensorflow", "torch")
_ON = ("1", "y", "yes", "t", "true", "on")  # what JAX reads as on, in any case


def jax_x64_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an environment (default: this process's) turns JAX's x64 on.

    `JAX_ENABLE_X64` is read as JAX reads it at import: on for `1`, `y`,
    `yes`, `t`, `true` and `on`, in any case; off when unset or anything else
    (JAX itself refuses a value that is neither on nor off).

    Args:
        environ: the environment to read; `None` for `os.environ`.

    Returns:
        `True` when a JAX started with that environment holds float64.

    >>> from keras_policy_ext.backends import jax_x64_on
    >>> jax_x64_on({"JAX_ENABLE_X64": "Yes"}), jax_x64_on({"JAX_ENABLE_X64": "0"}), jax_x64_on({})
    (True, False, False)
    """
    environ = os.environ if environ is None else environ
    return environ.get("JAX_ENABLE_X64", "").lower() in _ON


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
