"""Checks that layers really store and compute in their policy's dtypes.

What users call from their own tests: `check_layer`, `assert_conforms`,
the zoo of stock layers, `clean_state`, and the pytest fixtures (the
`keras_policy_ext` pytest plugin). Each name loads its module on first use,
so the pytest plugin imports Keras only when a fixture or check runs.

>>> import keras, numpy as np, keras_policy_ext as kpe
>>> report = kpe.testing.check_layer(
...     lambda: keras.layers.Dense(4), np.ones((2, 3), "float32"),
...     policies=["float32", "mixed_bfloat16"])
>>> report.ok
True
>>> with kpe.testing.clean_state():
...     kpe.config.set_dtype_policy("mixed_float16")
>>> kpe.config.dtype_policy()
<DTypePolicy "float32">
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_POLICIES": "checks",
    "TOLERANCES": "checks",
    "CaseResult": "checks",
    "ConformanceError": "checks",
    "Finding": "checks",
    "Report": "checks",
    "assert_conforms": "checks",
    "check_layer": "checks",
    "clean_state": "state",
    "ZOO": "zoo",
    "ZooEntry": "zoo",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The submodules, reachable as attributes once imported.
_MODULES = ("checks", "multibackend", "pytest_plugin", "state", "zoo")


def __dir__() -> list[str]:
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    loaded = {n for n in _MODULES if n in globals()}
    return sorted({*dunders, *_EXPORTS, *loaded})
