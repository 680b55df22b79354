"""Legacy aliases, as in `keras.mixed_precision`.

>>> import keras_policy_ext as kpe
>>> kpe.mixed_precision.set_global_policy("mixed_float16")
>>> kpe.mixed_precision.global_policy()
<DTypePolicy "mixed_float16">
>>> kpe.mixed_precision.set_global_policy("float32")
"""

from keras_policy_ext.config import dtype_policy, set_dtype_policy
from keras_policy_ext.policy import DTypePolicy

__all__ = [
    "DTypePolicy",
    "Policy",
    "dtype_policy",
    "global_policy",
    "set_dtype_policy",
    "set_global_policy",
]

Policy = DTypePolicy
global_policy = dtype_policy
set_global_policy = set_dtype_policy
