"""keras-policy-ext: Keras dtype policies on `keras.ops`, for every backend.

The top level holds what users call; each name loads its module on first
use, so `import keras_policy_ext` alone imports neither Keras nor a backend
(the command line answers `--version` and `--help` that way). Imported once
Keras is, it registers its serializable classes (policies, rules, the loss
scale optimizer) with Keras at once, so that `keras.saving.load_model`
reads files that name them.

>>> import keras, keras_policy_ext as kpe
>>> with kpe.config.policy_scope("mixed_bfloat16"):
...     layer = keras.layers.Dense(4)
>>> layer.dtype_policy
<DTypePolicy "mixed_bfloat16">
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "DTypePolicy": "policy",
    "FloatDTypePolicy": "policy",
    "install": "plugin",
    "installed": "plugin",
    "is_installed": "plugin",
    "uninstall": "plugin",
    "Rule": "rules",
    "Rules": "rules",
    "explain": "rules",
    "with_float32_outputs": "models",
    "retarget": "retargeting",
    "load_model": "saving",
    "save_model": "saving",
    "LossScaleOptimizer": "loss_scale.optimizer",
    "compile": "loss_scale.optimizer",
    "needs_loss_scaling": "loss_scale.optimizer",
    "validate": "validation",
    "Validation": "validation",
    "PolicyRefusedError": "validation",
}
# Modules users reach as `kpe.<name>`.
_MODULES = (
    "backends",
    "config",
    "dtype_policies",
    "internals",
    "loss_scale",
    "mixed_precision",
    "models",
    "plugin",
    "policy",
    "rules",
    "saving",
    "testing",
)
# Modules that register classes with Keras's serialization.
_REGISTERING = ("policy", "rules", "loss_scale.optimizer")

# `compile` stays `kpe.compile`, out of `import *` (it is a builtin's name);
# `FloatDTypePolicy` is an alias of `DTypePolicy`.
__all__ = [
    *(name for name in _EXPORTS if name not in ("compile", "FloatDTypePolicy")),
    "config",
    "dtype_policies",
    "loss_scale",
    "mixed_precision",
    "testing",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        from importlib.metadata import version

        globals()["__version__"] = version("keras-policy-ext")
        return globals()["__version__"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_MODULES, "__version__"})


if "keras" in sys.modules:
    for _module in _REGISTERING:
        importlib.import_module(f"{__name__}.{_module}")
