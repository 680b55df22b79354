import keras
import numpy as np
import pytest
from keras import ops

import keras_policy_ext as kpe
from keras_policy_ext.loss_scale import (
    DynamicLossScale,
    LossScaleStuckError,
    StaticLossScale,
    all_finite,
)

BACKEND = keras.backend.backend()
TRUE, FALSE = ops.convert_to_tensor(True), ops.convert_to_tensor(False)


def value(x):
    return ops.convert_to_numpy(x).item()


def test_scale_and_unscale_keep_dtypes():
    scale = DynamicLossScale(initial=1024.0)
    loss = ops.convert_to_tensor(3.0, "float32")
    assert value(scale.scale(loss)) == 3072.0
    grads = {"w": ops.ones((2,), "float16") * 2048, "b": None, "v": ops.ones((1,), "float32")}
    out = scale.unscale(grads)
    assert out["b"] is None
    assert keras.backend.standardize_dtype(out["w"].dtype) == "float16"
    np.testing.assert_array_equal(ops.convert_to_numpy(out["w"]), [2.0, 2.0])
    assert value(out["v"][0]) == 1 / 1024


def test_dynamic_scale_grows_shrinks_and_stays_within_bounds():
    scale = DynamicLossScale(initial=8.0, period=3, factor=2.0, floor=2.0, ceiling=32.0)
    seen = []
    for finite in [True] * 9 + [False] * 6:
        scale = scale.adjust(TRUE if finite else FALSE)
        seen.append(float(scale))
    assert seen == [8, 8, 16, 16, 16, 32, 32, 32, 32, 16, 8, 4, 2, 2, 2]
    assert (value(scale.skipped_steps), value(scale.floor_steps)) == (6, 3)
    assert value(scale.counter) == 0


def test_two_hundred_non_finite_steps_stop_at_the_floor():
    scale = DynamicLossScale()
    for _ in range(200):
        scale = scale.adjust(FALSE)
    assert float(scale) == 1.0 and value(scale.skipped_steps) == 200


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="Keras 3.15.1's eager LossScaleOptimizer.apply raises UnexpectedTracerError "
    "on JAX (custom loops: keras-team/keras#19244)",
)
def test_keras_loss_scale_optimizer_collapses_to_zero():
    """The gap kpe's floor closes (Keras 3.15.1)."""
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    var = keras.Variable(np.ones(2, "float32"))
    optimizer.build([var])
    for _ in range(200):
        optimizer.apply([ops.convert_to_tensor(np.array([np.inf, 1.0], "float32"))], [var])
    if value(optimizer.dynamic_scale) != 0.0:
        pytest.skip("this Keras's LossScaleOptimizer no longer collapses to 0")


def test_settings_survive_flatten_unflatten_and_config():
    scale = DynamicLossScale(initial=4.0, period=7, factor=4.0, floor=0.5, ceiling=64.0)
    scale = scale.adjust(FALSE)
    children, aux = scale.tree_flatten()
    back = DynamicLossScale.tree_unflatten(aux, children)
    assert (back.period, back.factor, back.floor, back.ceiling) == (7, 4.0, 0.5, 64.0)
    config = scale.get_config()
    assert config == {
        "initial": 1.0, "period": 7, "factor": 4.0, "floor": 0.5, "ceiling": 64.0,
        "counter": 0, "skipped_steps": 1, "floor_steps": 0,
    }  # fmt: skip
    assert DynamicLossScale.from_config(config).get_config() == config
    static = StaticLossScale(8.0)
    assert StaticLossScale.from_config(static.get_config()).get_config() == {"loss_scale": 8.0}
    assert static.adjust(FALSE) is static


def test_all_finite():
    assert bool(all_finite([np.ones(3), {"a": np.zeros(2)}, None]))
    assert not bool(all_finite([np.ones(3), np.array([np.nan])]))
    assert bool(all_finite([]))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"period": 0}, "period=0"),
        ({"factor": 1.0}, "factor=1.0"),
        ({"floor": 0.0}, "floor=0.0"),
        ({"floor": 8.0, "ceiling": 4.0}, "ceiling=4.0"),
    ],
)
def test_bad_settings_are_value_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DynamicLossScale(**kwargs)


def test_check_warns_or_raises_when_stuck_at_the_floor():
    scale = DynamicLossScale(initial=2.0, floor=1.0)
    for _ in range(5):
        scale = scale.adjust(FALSE)
    scale.check(max_floor_steps=10)  # 5 steps at the floor: fine
    with pytest.warns(RuntimeWarning, match="5 steps at its floor"):
        scale.check(max_floor_steps=3)
    with pytest.raises(LossScaleStuckError, match="5 steps skipped"):
        scale.check(max_floor_steps=3, on_stuck="raise")
    with pytest.raises(ValueError, match="on_stuck='ignore'"):
        scale.check(3, on_stuck="ignore")


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit exists on the JAX backend only")
def test_jitted_adjust_keeps_the_floor_on_jax():
    import jax

    step = jax.jit(lambda scale, finite: scale.adjust(finite))
    scale = DynamicLossScale(initial=8.0, floor=2.0, ceiling=16.0)
    for _ in range(10):
        scale = step(scale, False)
    assert float(scale) == 2.0 and scale.floor == 2.0 and scale.ceiling == 16.0
    assert jax.tree_util.tree_structure(scale).num_leaves == 4


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function exists on TensorFlow only")
def test_tf_function_adjust_keeps_the_floor():
    import tensorflow as tf

    scale = DynamicLossScale(initial=8.0, floor=2.0)
    children, aux = scale.tree_flatten()

    @tf.function
    def step(*children):
        return DynamicLossScale.tree_unflatten(aux, children).adjust(False).tree_flatten()[0]

    for _ in range(10):
        children = step(*children)
    assert float(DynamicLossScale.tree_unflatten(aux, children)) == 2.0


def test_kpe_namespace():
    assert kpe.loss_scale.DynamicLossScale is DynamicLossScale
