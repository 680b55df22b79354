"""Checks that layers really store and compute in their policy's dtypes.

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

from keras_policy_ext.testing.checks import (
    DEFAULT_POLICIES,
    TOLERANCES,
    CaseResult,
    ConformanceError,
    Finding,
    Report,
    assert_conforms,
    check_layer,
)
from keras_policy_ext.testing.state import clean_state
from keras_policy_ext.testing.zoo import ZOO, ZooEntry

__all__ = [
    "DEFAULT_POLICIES",
    "TOLERANCES",
    "ZOO",
    "CaseResult",
    "ConformanceError",
    "Finding",
    "Report",
    "ZooEntry",
    "assert_conforms",
    "check_layer",
    "clean_state",
]
