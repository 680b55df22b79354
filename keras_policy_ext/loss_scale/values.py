"""Loss scales for custom training loops, written with `keras.ops` only.

A loss scale multiplies the loss before differentiation, so that float16
gradients do not underflow, and divides the gradients after. Both kinds are
immutable values, as in jmp: `adjust` returns a new one.

- `StaticLossScale(scale)`: a fixed scale.
- `DynamicLossScale(...)`: halves (`/ factor`) after a step with non-finite
  gradients, doubles (`* factor`) after `period` finite steps in a row, and
  stays within `[floor, ceiling]`: it never collapses to zero (Keras's
  `LossScaleOptimizer` reaches 0.0 after 200 non-finite steps) nor overflows.
  Its settings are checked as `kpe.LossScaleOptimizer`'s are
  (`check_settings`): a bad one is an error, never silently clipped.

Their tensors (scale, counters) are the children of a tree and the settings
(`period`, `factor`, `floor`, `ceiling`) its static data, so the settings
survive `tree_flatten` / `tree_unflatten`, `jax.jit` (the classes are JAX
pytrees when JAX is loaded), `tf.function` and `get_config` / `from_config`.
`all_finite(grads)` says whether a step's gradients may be applied.

>>> import keras, keras_policy_ext as kpe
>>> scale = kpe.loss_scale.DynamicLossScale(initial=2.0**15, floor=1.0)
>>> float(scale.scale(keras.ops.convert_to_tensor(2.0)))
65536.0
>>> for _ in range(40):
...     scale = scale.adjust(keras.ops.convert_to_tensor(False))
>>> float(scale.loss_scale), int(scale.skipped_steps), int(scale.floor_steps)
(1.0, 40, 26)
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from typing import Any

import keras
from keras import ops


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name}={value!r}: expected a real number.")
    return float(value)


def check_settings(
    initial: Any,
    floor: Any,
    ceiling: Any,
    period: Any,
    *,
    initial_name: str = "initial",
    period_name: str = "period",
) -> tuple[float, float, float, int]:
    """Validates a dynamic loss scale's settings.

    The one check behind `DynamicLossScale` and `kpe.LossScaleOptimizer`
    (which names `initial` `initial_scale` and `period`
    `dynamic_growth_steps`): `floor` and `ceiling` finite with
    `0 < floor <= ceiling`, `floor <= initial <= ceiling` (an initial scale
    out of bounds is an error, not clipped), `period` an int >= 1.

    Args:
        initial: the first scale.
        floor: the lowest scale.
        ceiling: the highest scale.
        period: finite steps in a row before the scale grows.
        initial_name: the name of `initial` in error messages.
        period_name: the name of `period` in error messages.

    Returns:
        `(initial, floor, ceiling, period)`: three floats and an int.

    Raises:
        TypeError: a setting of the wrong type, named.
        ValueError: a setting out of its range, named with the range.

    >>> from keras_policy_ext.loss_scale.values import check_settings
    >>> check_settings(2.0**15, 1, 2.0**24, 2000)
    (32768.0, 1.0, 16777216.0, 2000)
    >>> check_settings(2.0**30, 1, 2.0**24, 2000, initial_name="initial_scale")
    Traceback (most recent call last):
    ...
    ValueError: Invalid initial_scale=1073741824.0: expected a scale within [1, 16777216] ...
    """
    if isinstance(period, bool) or not isinstance(period, numbers.Integral):
        raise TypeError(f"Invalid {period_name}={period!r}: expected an int >= 1.")
    if period < 1:
        raise ValueError(f"Invalid {period_name}={period!r}: expected an int >= 1.")
    value, low, high = (
        _number(initial_name, initial),
        _number("floor", floor),
        _number("ceiling", ceiling),
    )
    if not (math.isfinite(low) and low > 0):
        raise ValueError(f"Invalid floor={floor!r}: expected a finite number > 0.")
    if not (math.isfinite(high) and high >= low):
        raise ValueError(
            f"Invalid ceiling={ceiling!r}: expected a finite number >= floor ({low:.10g})."
        )
    if not low <= value <= high:
        raise ValueError(
            f"Invalid {initial_name}={initial!r}: expected a scale within "
            f"[{low:.10g}, {high:.10g}] (floor, ceiling); it is not clipped."
        )
    return value, low, high, int(period)


def all_finite(tree: Any) -> Any:
    """Whether every tensor in `tree` is finite, as a boolean scalar tensor.

    Args:
        tree: a nested structure of tensors (gradients); `None`s are skipped.

    Returns:
        A boolean scalar tensor (`True` for a tree without tensors).

    >>> import numpy as np, keras_policy_ext as kpe
    >>> bool(kpe.loss_scale.all_finite({"a": np.ones(2), "b": [np.array([1.0, np.inf])]}))
    False
    """
    leaves = [ops.all(ops.isfinite(x)) for x in keras.tree.flatten(tree) if x is not None]
    return ops.all(ops.stack(leaves)) if leaves else ops.convert_to_tensor(True)


class _LossScale:
    """What both loss scales share: a float32 `loss_scale` tensor."""

    loss_scale: Any

    def scale(self, loss: Any) -> Any:
        """Multiplies the loss by the scale, before differentiation.

        Args:
            loss: the loss tensor (compute it in float32).

        Returns:
            `loss * loss_scale`, in the loss's dtype.

        >>> import keras, keras_policy_ext as kpe
        >>> float(kpe.loss_scale.StaticLossScale(8.0).scale(keras.ops.convert_to_tensor(0.5)))
        4.0
        """
        return ops.multiply(loss, ops.cast(self.loss_scale, loss.dtype))

    def unscale(self, grads: Any) -> Any:
        """Divides the gradients by the scale, after differentiation.

        Args:
            grads: a tree of gradients; `None`s are kept.

        Returns:
            The same tree, each gradient divided by the scale in its own dtype.

        >>> import keras, keras_policy_ext as kpe
        >>> grads = kpe.loss_scale.StaticLossScale(8.0).unscale([keras.ops.ones(2), None])
        >>> keras.ops.convert_to_numpy(grads[0]).tolist(), grads[1]
        ([0.125, 0.125], None)
        """
        inverse = ops.divide(1.0, self.loss_scale)
        return keras.tree.map_structure(
            lambda g: None if g is None else ops.multiply(g, ops.cast(inverse, g.dtype)), grads
        )


class StaticLossScale(_LossScale):
    """A fixed loss scale.

    Args:
        loss_scale: the scale, a number or a scalar tensor (held as float32).

    >>> import keras, keras_policy_ext as kpe
    >>> scale = kpe.loss_scale.StaticLossScale(128.0)
    >>> float(scale.scale(keras.ops.convert_to_tensor(0.5)))
    64.0
    >>> float(scale.unscale([keras.ops.convert_to_tensor(64.0)])[0])
    0.5
    """

    def __init__(self, loss_scale: Any) -> None:
        self.loss_scale = ops.convert_to_tensor(loss_scale, "float32")

    def adjust(self, grads_finite: Any) -> StaticLossScale:
        """The same scale: a static scale does not move.

        Args:
            grads_finite: whether the step's gradients were all finite (unused).

        Returns:
            This loss scale.
        """
        return self

    def tree_flatten(self) -> tuple[tuple, None]:
        return (self.loss_scale,), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple) -> StaticLossScale:
        return cls(children[0])

    def get_config(self) -> dict:
        return {"loss_scale": float(ops.convert_to_numpy(self.loss_scale))}

    @classmethod
    def from_config(cls, config: dict) -> StaticLossScale:
        return cls(**config)

    def __repr__(self) -> str:
        return f"StaticLossScale({self.get_config()['loss_scale']:g})"


class LossScaleStuckError(RuntimeError):
    """`DynamicLossScale.check` found the scale stuck at its floor.

    >>> import keras_policy_ext as kpe
    >>> issubclass(kpe.loss_scale.LossScaleStuckError, RuntimeError)
    True
    """


class DynamicLossScale(_LossScale):
    """A loss scale that follows the gradients, within `[floor, ceiling]`.

    Telemetry, as tensors: `skipped_steps` (steps with non-finite
    gradients, in all) and `floor_steps` (non-finite steps in a row that
    left the scale at its floor: a finite step resets it, since training at
    the floor is still training); `check()` acts on them.

    Args:
        initial: the first scale (Keras's default, 2**15), within
            `[floor, ceiling]`.
        period: finite steps in a row before the scale grows.
        factor: what the scale grows and shrinks by, > 1.
        floor: the lowest scale, > 0.
        ceiling: the highest scale.
        counter: finite steps in a row so far (restored state).
        skipped_steps: non-finite steps so far (restored state).
        floor_steps: non-finite steps in a row at the floor (restored state).

    Raises:
        TypeError: a setting of the wrong type (`check_settings`).
        ValueError: a setting out of range (`check_settings`), or
            `factor <= 1`.

    >>> import keras, keras_policy_ext as kpe
    >>> scale = kpe.loss_scale.DynamicLossScale(initial=4.0, period=2, ceiling=8.0)
    >>> finite = keras.ops.convert_to_tensor(True)
    >>> [float(scale := scale.adjust(finite)) for _ in range(6)]
    [4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    """

    def __init__(
        self,
        initial: float = 2.0**15,
        *,
        period: int = 2000,
        factor: float = 2.0,
        floor: float = 1.0,
        ceiling: float = 2.0**24,
        counter: Any = 0,
        skipped_steps: Any = 0,
        floor_steps: Any = 0,
    ) -> None:
        initial, floor, ceiling, period = check_settings(initial, floor, ceiling, period)
        if not (_number("factor", factor) > 1 and math.isfinite(factor)):
            raise ValueError(f"Invalid factor={factor!r}: expected a finite number > 1.")
        self.period, self.factor = period, float(factor)
        self.floor, self.ceiling = floor, ceiling
        self.loss_scale = ops.convert_to_tensor(initial, "float32")
        self.counter = ops.convert_to_tensor(counter, "int32")
        self.skipped_steps = ops.convert_to_tensor(skipped_steps, "int32")
        self.floor_steps = ops.convert_to_tensor(floor_steps, "int32")

    def adjust(self, grads_finite: Any) -> DynamicLossScale:
        """The scale after a step: halved after non-finite gradients, grown after `period`.

        Args:
            grads_finite: a boolean (scalar tensor): whether the step's
                gradients were all finite (`all_finite(grads)`).

        Returns:
            A new `DynamicLossScale` (this one is unchanged), within
            `[floor, ceiling]`, its telemetry updated.

        >>> import keras, keras_policy_ext as kpe
        >>> scale = kpe.loss_scale.DynamicLossScale(initial=8.0)
        >>> float(scale.adjust(keras.ops.convert_to_tensor(False))), float(scale)
        (4.0, 8.0)
        """
        finite = ops.convert_to_tensor(grads_finite, "bool")
        grow = ops.logical_and(finite, ops.equal(self.counter, self.period - 1))
        scale = ops.where(
            grow,
            ops.minimum(ops.multiply(self.loss_scale, self.factor), self.ceiling),
            ops.where(
                finite,
                self.loss_scale,
                ops.maximum(ops.divide(self.loss_scale, self.factor), self.floor),
            ),
        )
        counter = ops.where(ops.logical_and(finite, ops.logical_not(grow)), self.counter + 1, 0)
        # Only non-finite steps that leave the scale at its floor count, in a row.
        stuck = ops.logical_and(ops.logical_not(finite), ops.less_equal(scale, self.floor))
        return self._with(
            scale,
            counter,
            self.skipped_steps + ops.cast(ops.logical_not(finite), "int32"),
            ops.where(stuck, self.floor_steps + 1, 0),
        )

    def check(self, max_floor_steps: int, on_stuck: str = "warn") -> None:
        """Warns or raises when over `max_floor_steps` non-finite steps in a row hit the floor.

        Eager only (it reads the telemetry): call it between steps, outside
        `jit` / `tf.function`. `on_stuck` is `"warn"` (a `RuntimeWarning`) or
        `"raise"` (`LossScaleStuckError`): a scale stuck at its floor means the
        gradients are non-finite whatever the scale, so the model diverged.
        Finite steps at the floor are not counted (a floor of 1 is no scaling,
        and training there is fine).

        Args:
            max_floor_steps: how many non-finite steps in a row at the floor
                are tolerated.
            on_stuck: `"warn"` or `"raise"`.

        Raises:
            LossScaleStuckError: with `on_stuck="raise"`, when stuck.
            ValueError: an `on_stuck` other than `"warn"` or `"raise"`, or a
                negative `max_floor_steps`.
            TypeError: a `max_floor_steps` that is not an int.

        >>> import keras, keras_policy_ext as kpe
        >>> scale = kpe.loss_scale.DynamicLossScale(initial=1.0, floor=1.0)
        >>> for _ in range(100):
        ...     scale = scale.adjust(keras.ops.convert_to_tensor(True))
        >>> scale.check(max_floor_steps=10, on_stuck="raise")  # finite steps: not stuck
        >>> for _ in range(11):
        ...     scale = scale.adjust(keras.ops.convert_to_tensor(False))
        >>> scale.check(max_floor_steps=10, on_stuck="raise")
        Traceback (most recent call last):
        ...
        keras_policy_ext.loss_scale.values.LossScaleStuckError: The loss scale spent 11 steps ...
        """
        if on_stuck not in ("warn", "raise"):
            raise ValueError(f"Invalid on_stuck={on_stuck!r}: expected 'warn' or 'raise'.")
        if isinstance(max_floor_steps, bool) or not isinstance(max_floor_steps, numbers.Integral):
            raise TypeError(f"Invalid max_floor_steps={max_floor_steps!r}: expected an int >= 0.")
        if max_floor_steps < 0:
            raise ValueError(f"Invalid max_floor_steps={max_floor_steps!r}: expected an int >= 0.")
        steps = int(ops.convert_to_numpy(self.floor_steps))
        if steps > max_floor_steps:
            message = (
                f"The loss scale spent {steps} steps at its floor ({self.floor:.10g}) in a "
                f"row, all with non-finite gradients, more than max_floor_steps="
                f"{max_floor_steps}: the gradients stay non-finite whatever the scale "
                f"({int(ops.convert_to_numpy(self.skipped_steps))} steps skipped in all)."
            )
            if on_stuck == "raise":
                raise LossScaleStuckError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _settings(self) -> tuple:
        return self.period, self.factor, self.floor, self.ceiling

    def _with(self, scale: Any, counter: Any, skipped: Any, floor_steps: Any) -> DynamicLossScale:
        return type(self).tree_unflatten(self._settings(), (scale, counter, skipped, floor_steps))

    def tree_flatten(self) -> tuple[tuple, tuple]:
        """`(tensors, settings)`: the settings are static data."""
        children = (self.loss_scale, self.counter, self.skipped_steps, self.floor_steps)
        return children, self._settings()

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> DynamicLossScale:
        new = cls.__new__(cls)
        new.period, new.factor, new.floor, new.ceiling = aux
        new.loss_scale, new.counter, new.skipped_steps, new.floor_steps = children
        return new

    def get_config(self) -> dict:
        def value(x: Any) -> Any:
            return ops.convert_to_numpy(x).item()

        return {
            "initial": value(self.loss_scale),
            "period": self.period,
            "factor": self.factor,
            "floor": self.floor,
            "ceiling": self.ceiling,
            "counter": value(self.counter),
            "skipped_steps": value(self.skipped_steps),
            "floor_steps": value(self.floor_steps),
        }

    @classmethod
    def from_config(cls, config: dict) -> DynamicLossScale:
        return cls(**config)

    def __float__(self) -> float:
        return float(ops.convert_to_numpy(self.loss_scale))

    def __repr__(self) -> str:
        return (
            f"DynamicLossScale(period={self.period}, factor={self.factor:g}, "
            f"floor={self.floor:g}, ceiling={self.ceiling:g})"
        )


def _register_with_jax() -> None:
    """Makes both classes JAX pytrees when JAX is loaded (it is on its backend)."""
    jax = sys.modules.get("jax")
    if jax is not None:
        for cls in (StaticLossScale, DynamicLossScale):
            jax.tree_util.register_pytree_node_class(cls)


_register_with_jax()
