"""kpe loss scales in hand-written training loops, on each backend's own autodiff.

The model computes in float16 (mixed_float16) and its loss is tiny, so its
float16 gradients underflow to zero: without loss scaling training stalls,
with a `DynamicLossScale` it trains. Backend code is allowed here (tests),
never in the package.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_policy_ext as kpe
from keras_policy_ext.loss_scale import DynamicLossScale, StaticLossScale, all_finite

BACKEND = keras.backend.backend()
TINY = 1e-8  # loss multiplier: float16 gradients of order 1e-8 underflow to 0
LR = 0.05 / TINY
STEPS = 12


def model_and_data():
    keras.utils.set_random_seed(0)
    with kpe.config.policy_scope("mixed_float16"):
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
        )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    return model, x, y


def mse(pred, y):
    return ops.mean(ops.square(ops.subtract(ops.cast(pred, "float32"), y)))


def train_jax(model, x, y, scale, jit):
    import jax
    import jax.numpy as jnp

    def loss_fn(tv, ntv, scale):
        pred, _ = model.stateless_call(tv, ntv, x)
        loss = mse(pred, y)
        return scale.scale(TINY * loss), loss

    def step(tv, ntv, scale):
        grads, loss = jax.grad(loss_fn, has_aux=True)(tv, ntv, scale)
        grads = scale.unscale(grads)
        finite = all_finite(grads)
        tv = [jnp.where(finite, v - LR * g, v) for v, g in zip(tv, grads)]
        return tv, scale.adjust(finite), loss

    step = jax.jit(step) if jit else step
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    losses = []
    for _ in range(STEPS):
        tv, scale, loss = step(tv, ntv, scale)
        losses.append(float(loss))
    for variable, value in zip(model.trainable_variables, tv):
        variable.assign(value)
    return scale, losses


def train_tensorflow(model, x, y, scale, jit):
    import tensorflow as tf

    variables = model.trainable_variables
    cls, (children, aux) = type(scale), scale.tree_flatten()

    def step(*children):
        scale = cls.tree_unflatten(aux, children)
        with tf.GradientTape() as tape:
            loss = mse(model(x), y)
            scaled = scale.scale(TINY * loss)
        grads = scale.unscale(tape.gradient(scaled, [v.value for v in variables]))
        finite = all_finite(grads)
        for v, g in zip(variables, grads):
            v.assign(ops.where(finite, v.value - LR * g, v.value))
        return scale.adjust(finite).tree_flatten()[0], loss

    step = tf.function(step) if jit else step
    losses = []
    for _ in range(STEPS):
        children, loss = step(*children)
        losses.append(float(loss))
    return cls.tree_unflatten(aux, children), losses


def train_torch(model, x, y, scale, jit):
    import torch

    variables = model.trainable_variables
    losses = []
    for _ in range(STEPS):
        loss = mse(model(x), y)
        grads = torch.autograd.grad(scale.scale(TINY * loss), [v.value for v in variables])
        grads = scale.unscale(list(grads))
        finite = all_finite(grads)
        with torch.no_grad():
            for v, g in zip(variables, grads):
                v.assign(ops.where(finite, v.value - LR * g, v.value))
        scale = scale.adjust(finite)
        losses.append(float(loss))
    return scale, losses


TRAIN = {"jax": train_jax, "tensorflow": train_tensorflow, "torch": train_torch}
COMPILED = {"jax": "jax.jit", "tensorflow": "tf.function"}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "compiled"])
def test_underflowing_gradients_stall_without_scaling_and_train_with_it(jit):
    if jit and BACKEND not in COMPILED:
        pytest.skip(f"no compiled custom step on {BACKEND} here (torch.compile is not tested)")
    model, x, y = model_and_data()
    start = [v.numpy() for v in model.trainable_variables]
    _, flat = TRAIN[BACKEND](model, x, y, StaticLossScale(1.0), jit)
    stalled = [v.numpy() for v in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(start, stalled)), "no scaling: no update"
    assert flat[0] == flat[-1]

    scale, losses = TRAIN[BACKEND](model, x, y, DynamicLossScale(), jit)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    assert 1.0 <= float(scale) <= 2.0**24 and scale.floor == 1.0 and scale.ceiling == 2.0**24
    for v in model.trainable_variables:
        assert keras.backend.standardize_dtype(v.value.dtype) == "float32"


def optimizer_step(model, x, y, optimizer):
    """One eager step with `optimizer.apply`, on this backend's autodiff; the loss."""
    variables = model.trainable_variables
    if BACKEND == "jax":
        import jax

        def loss_fn(tv, ntv):
            pred, _ = model.stateless_call(tv, ntv, x)
            loss = mse(pred, y)
            return optimizer.scale_loss(TINY * loss), loss

        tv = [v.value for v in variables]
        ntv = [v.value for v in model.non_trainable_variables]
        grads, loss = jax.grad(loss_fn, has_aux=True)(tv, ntv)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = mse(model(x), y)
            scaled = optimizer.scale_loss(TINY * loss)
        grads = tape.gradient(scaled, [v.value for v in variables])
    else:
        import torch

        loss = mse(model(x), y)
        scaled = optimizer.scale_loss(TINY * loss)
        grads = list(torch.autograd.grad(scaled, [v.value for v in variables]))
    optimizer.apply(grads, variables)
    return float(loss)


def test_kpe_loss_scale_optimizer_trains_in_an_eager_custom_loop():
    """`kpe.LossScaleOptimizer.apply` eagerly, JAX included (Keras's fails there: keras#19244)."""
    model, x, y = model_and_data()
    optimizer = kpe.LossScaleOptimizer(keras.optimizers.SGD(LR), floor=1.0, ceiling=2.0**24)
    optimizer.build(model.trainable_variables)
    losses = [optimizer_step(model, x, y, optimizer) for _ in range(STEPS)]
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    assert 1.0 <= float(ops.convert_to_numpy(optimizer.dynamic_scale)) <= 2.0**24
    assert int(ops.convert_to_numpy(optimizer.iterations)) >= 1
    for v in model.trainable_variables:
        assert keras.backend.standardize_dtype(v.value.dtype) == "float32"
