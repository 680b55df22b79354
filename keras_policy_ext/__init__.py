"""keras-policy-ext: Keras dtype policies on `keras.ops`, for every backend.

>>> import keras, keras_policy_ext as kpe
>>> with kpe.config.policy_scope("mixed_bfloat16"):
...     layer = keras.layers.Dense(4)
>>> layer.dtype_policy
<DTypePolicy "mixed_bfloat16">
"""

from importlib.metadata import version as _version

from keras_policy_ext import (
    config,
    dtype_policies,
    loss_scale,
    mixed_precision,
    plugin,
    rules,
    saving,
    testing,
)
from keras_policy_ext.plugin import install, installed, is_installed, uninstall
from keras_policy_ext.policy import DTypePolicy, FloatDTypePolicy
from keras_policy_ext.retarget import retarget
from keras_policy_ext.rules import Rule, Rules, explain, with_float32_outputs
from keras_policy_ext.saving import load_model, save_model
from keras_policy_ext.scaled_fit import LossScaleOptimizer, compile, needs_loss_scaling
from keras_policy_ext.validation import Validation, validate

__version__ = _version("keras-policy-ext")

__all__ = [
    "DTypePolicy",
    "FloatDTypePolicy",
    "LossScaleOptimizer",
    "Rule",
    "Rules",
    # `compile` stays out: `from keras_policy_ext import *` must not shadow the
    # builtin `compile`; it is reachable as `kpe.compile`.
    "config",
    "dtype_policies",
    "explain",
    "install",
    "installed",
    "is_installed",
    "load_model",
    "loss_scale",
    "mixed_precision",
    "needs_loss_scaling",
    "plugin",
    "retarget",
    "rules",
    "save_model",
    "saving",
    "testing",
    "uninstall",
    "validate",
    "Validation",
    "with_float32_outputs",
]
