"""keras-policy-ext: Keras dtype policies on `keras.ops`, for every backend.

The top level holds what users call; each name loads its module on first
use, so `import keras_policy_ext` alone imports neither Keras nor a backend
(the command line answers `--version` and `--help` that way). Imported once
Keras is, it registers its serializable classes (policies, rules, the loss
scale optimizer) with Keras at once, so that `keras.saving.load_model`
reads files that name them.

>>> import keras, keras_policy_ext as kpe
>>> with kpe.policy_scope("mixed_bfloat16"):
...     layer = keras.layers.Dense(4)
>>> layer.dtype_policy
<DTypePolicy "mixed_bfloat16">
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import warnings as _warnings

# Public name -> the module that defines it.
_EXPORTS = {
    "DTypePolicy": "policy",
    "FloatDTypePolicy": "policy",
    "policy_scope": "config",
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
    "compile_model": "loss_scale.optimizer",
    "needs_loss_scaling": "loss_scale.optimizer",
    "validate": "validation",
    "Validation": "validation",
    "PolicyRefusedError": "validation",
}
# Old name -> the public name that replaced it (each access warns).
_DEPRECATED = {"compile": "compile_model"}
# Modules users reach as `kpe.<name>`.
_MODULES = (
    "backends",
    "config",
    "dtype_policies",
    "loss_scale",
    "mixed_precision",
    "models",
    "plugin",
    "policy",
    "roles",
    "rules",
    "saving",
    "testing",
)
# Reachable as `kpe.internals` (tests, the checker), not part of the public face.
_HIDDEN_MODULES = ("internals",)
# Modules that register classes with Keras's serialization.
_REGISTERING = ("policy", "rules", "loss_scale.optimizer")

# `FloatDTypePolicy` is an alias of `DTypePolicy`, left out of `import *`.
__all__ = [
    *(name for name in _EXPORTS if name != "FloatDTypePolicy"),
    "config",
    "dtype_policies",
    "loss_scale",
    "mixed_precision",
    "testing",
]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        module = _importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        _warnings.warn(
            f"kpe.{name} is deprecated: it shadows Python's builtin {name}(); "
            f"use kpe.{new}, which takes the same arguments.",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(new)
    if name in _MODULES or name in _HIDDEN_MODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        from importlib.metadata import version

        globals()["__version__"] = version("keras-policy-ext")
        return globals()["__version__"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted({*dunders, *_EXPORTS, *_MODULES, "__version__"})


if "keras" in _sys.modules:
    for _module in _REGISTERING:
        _importlib.import_module(f"{__name__}.{_module}")
