"""keras-policy-ext: Keras dtype policies on `keras.ops`, for every backend.

>>> import keras, keras_policy_ext as kpe
>>> with kpe.config.policy_scope("mixed_bfloat16"):
...     layer = keras.layers.Dense(4)
>>> layer.dtype_policy
<DTypePolicy "mixed_bfloat16">
"""

from importlib.metadata import version as _version

from keras_policy_ext import config, dtype_policies, mixed_precision, testing
from keras_policy_ext.plugin import install, installed, is_installed, uninstall
from keras_policy_ext.policy import DTypePolicy, FloatDTypePolicy
from keras_policy_ext.retarget import load_model, retarget
from keras_policy_ext.validation import Validation, validate

__version__ = _version("keras-policy-ext")

__all__ = [
    "DTypePolicy",
    "FloatDTypePolicy",
    "config",
    "dtype_policies",
    "install",
    "installed",
    "is_installed",
    "load_model",
    "mixed_precision",
    "retarget",
    "testing",
    "uninstall",
    "validate",
    "Validation",
]
