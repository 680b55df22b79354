"""Loss scaling in `fit`, keyed on dtypes: a floored `LossScaleOptimizer`.

Keras wraps the optimizer in a `LossScaleOptimizer` only when the model's
policy is *named* `"mixed_float16"`, and that optimizer's scale has no
floor. kpe scales whenever any layer computes in float16 with float32
variables (whatever the policy's name, rules included), with a scale held
within `[floor, ceiling]`.

A model compiled with kpe records kpe's optimizer in its `.keras` file: where
kpe is not installed, `keras.saving.load_model(path)` raises `TypeError:
Could not locate class 'LossScaleOptimizer'`, and
`keras.saving.load_model(path, compile=False)` loads the model (weights and
policies) to compile again with Keras's own optimizer (see docs/loss_scaling.md).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_policy_ext import internals
from keras_policy_ext.internals import fixes
from keras_policy_ext.loss_scale.values import check_settings
from keras_policy_ext.models import sublayers


@keras.saving.register_keras_serializable(package="keras_policy_ext", name="LossScaleOptimizer")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's `LossScaleOptimizer` with its dynamic scale held in `[floor, ceiling]`.

    After every step (`apply`, and `stateless_apply` on JAX), the scale
    Keras computed is clipped to the bounds: 200 non-finite steps leave it at
    `floor`, not at 0.0. `apply` also works in an eager custom loop on JAX,
    where Keras's own raises `UnexpectedTracerError` (keras-team/keras#19244).
    The settings are checked as `kpe.loss_scale.DynamicLossScale`'s are
    (`kpe.loss_scale.check_settings`).

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` to wrap.
        initial_scale: the first scale, within `[floor, ceiling]`.
        dynamic_growth_steps: finite steps in a row before the scale
            doubles, an int >= 1.
        floor: the lowest scale, > 0.
        ceiling: the highest scale.
        **kwargs: the other arguments of Keras's `LossScaleOptimizer`
            (`name`, ...).

    Raises:
        TypeError: a setting of the wrong type.
        ValueError: a setting out of range (an `initial_scale` outside
            `[floor, ceiling]` is an error, never clipped).

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> optimizer = kpe.LossScaleOptimizer(keras.optimizers.SGD(), floor=2.0)
    >>> optimizer.floor, optimizer.ceiling
    (2.0, 16777216.0)
    >>> variable = keras.Variable(np.ones(2, "float32"))
    >>> for _ in range(20):  # non-finite gradients, in an eager loop
    ...     optimizer.apply([keras.ops.convert_to_tensor([np.inf, 1.0])], [variable])
    >>> float(optimizer.dynamic_scale), variable.numpy().tolist()
    (2.0, [1.0, 1.0])
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
        floor: float = 1.0,
        ceiling: float = 2.0**24,
        **kwargs: Any,
    ) -> None:
        initial_scale, floor, ceiling, dynamic_growth_steps = check_settings(
            initial_scale,
            floor,
            ceiling,
            dynamic_growth_steps,
            initial_name="initial_scale",
            period_name="dynamic_growth_steps",
        )
        super().__init__(inner_optimizer, initial_scale, dynamic_growth_steps, **kwargs)
        self.floor, self.ceiling = floor, ceiling

    @property
    def iterations(self) -> Any:
        """The steps taken: the inner optimizer's count, as Keras 3.9 and newer's.

        Keras 3.8 counts the wrapper's own steps, which its `apply` never
        advances (it stays 0 while the inner optimizer steps).
        """
        return self.inner_optimizer.iterations

    def _clipped(self, scale: Any) -> Any:
        return ops.clip(scale, self.floor, self.ceiling)

    def apply(self, grads: Any, trainable_variables: Any = None) -> None:
        workaround = fixes.get("loss_scale_apply_eager")
        if workaround.concerns() and workaround.probe():  # keras#19244
            fixes.apply_loss_scale_without_cond(self, grads, trainable_variables)
        else:
            super().apply(grads, trainable_variables)
        self.dynamic_scale.assign(self._clipped(self.dynamic_scale))

    def stateless_apply(self, optimizer_variables: Any, grads: Any, trainable_variables: Any):
        new_trainable, new_optimizer = super().stateless_apply(
            optimizer_variables, grads, trainable_variables
        )
        index = internals.loss_scale_index(self)
        new_optimizer = list(new_optimizer)
        new_optimizer[index] = self._clipped(new_optimizer[index])
        return new_trainable, new_optimizer

    def get_config(self) -> dict:
        return {**super().get_config(), "floor": self.floor, "ceiling": self.ceiling}


def needs_loss_scaling(model: keras.layers.Layer) -> bool:
    """Whether the model or any of its layers computes in float16 with float32 variables.

    Keras scales the loss only under a policy named `"mixed_float16"`; kpe
    asks the dtypes, so role names and rules are scaled too.

    Args:
        model: a `keras.Model` (or any layer).

    Returns:
        `True` when some layer computes in float16 over float32 variables.

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("params=float32,compute=float16"):
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> kpe.needs_loss_scaling(model)
    True
    """
    layers = [model, *sublayers(model)]
    return any(
        (layer.compute_dtype, layer.variable_dtype) == ("float16", "float32") for layer in layers
    )


def compile_model(model: keras.Model, optimizer: Any = "rmsprop", **kwargs: Any) -> None:
    """Compiles `model`, loss-scaling by dtypes with kpe's floored optimizer.

    `model.compile(optimizer, **kwargs)`, except that when
    `needs_loss_scaling(model)` and `auto_scale_loss` (default `True`), the
    optimizer is wrapped in `kpe.LossScaleOptimizer`; a model that needs no
    scaling compiles as it would. With the plugin installed, plain
    `model.compile(...)` does the same. (Formerly `kpe.compile`, a name that
    shadowed Python's builtin; that alias still works and warns.)

    Args:
        model: the `keras.Model` to compile.
        optimizer: an optimizer or its name, as `Model.compile` takes it.
        **kwargs: the other arguments of `Model.compile` (`loss`, `metrics`,
            ..., and `auto_scale_loss`).

    Raises:
        ValueError: what `Model.compile` raises for its arguments (an unknown
            optimizer name, for example).

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.policy_scope("mixed_float16"):
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> kpe.compile_model(model, "sgd", loss="mse")
    >>> type(model.optimizer).__name__, model.optimizer.floor
    ('LossScaleOptimizer', 1.0)
    """
    auto_scale_loss = kwargs.pop("auto_scale_loss", True)
    optimizer = scaled_optimizer(model, optimizer, auto_scale_loss)
    model.compile(optimizer=optimizer, auto_scale_loss=False, **kwargs)


def scaled_optimizer(model: keras.Model, optimizer: Any, auto_scale_loss: bool = True) -> Any:
    """`optimizer`, wrapped in `LossScaleOptimizer` when `model` needs loss scaling."""
    if not auto_scale_loss:
        return optimizer
    optimizer = keras.optimizers.get(optimizer)
    if needs_loss_scaling(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
    return optimizer
