"""Loss scaling: the loss-scale values for custom loops, and the optimizer for `fit`.

- `keras_policy_ext.loss_scale.values`: `StaticLossScale`, `DynamicLossScale`,
  `all_finite` and `check_settings`, immutable values written with
  `keras.ops` only (reached here as `kpe.loss_scale.DynamicLossScale`, ...).
- `keras_policy_ext.loss_scale.optimizer`: `LossScaleOptimizer`, Keras's own
  with a floored scale, and `compile_model` / `needs_loss_scaling`, which
  choose it by dtypes (reached as `kpe.LossScaleOptimizer`, ...).

>>> import keras_policy_ext as kpe
>>> kpe.loss_scale.StaticLossScale(128.0)
StaticLossScale(128)
"""

from keras_policy_ext.loss_scale.values import (
    DynamicLossScale,
    LossScaleStuckError,
    StaticLossScale,
    all_finite,
    check_settings,
)

__all__ = [
    "DynamicLossScale",
    "LossScaleStuckError",
    "StaticLossScale",
    "all_finite",
    "check_settings",
]
