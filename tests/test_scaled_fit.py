"""Loss scaling in fit, keyed on dtypes, with kpe's floored LossScaleOptimizer."""

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe

BACKEND = keras.backend.backend()


def mlp(policy=None, rules=None):
    with kpe.config.policy_scope(policy, rules=rules):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])


@pytest.mark.parametrize(
    "policy, scaled",
    [
        ("mixed_float16", True),
        ("p=f32,c=f16", True),
        ("mixed_bfloat16", False),
        ("float32", False),
        ("float16", False),
    ],
)
def test_scaling_is_keyed_on_dtypes(policy, scaled):
    model = mlp(policy)
    assert kpe.needs_loss_scaling(model) is scaled
    kpe.compile(model, "sgd", loss="mse")
    assert isinstance(model.optimizer, kpe.LossScaleOptimizer) is scaled


def test_rules_that_put_one_layer_in_float16_get_scaling():
    rules = kpe.Rules([kpe.Rule("mixed_float16", name="dense_head")], default="float32")
    with kpe.installed():
        with kpe.config.policy_scope(rules=rules):
            model = keras.Sequential(
                [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1, name="dense_head")]
            )
        assert model.dtype_policy.name == "float32"  # Keras alone would not scale
        model.compile(optimizer="sgd", loss="mse")  # the plugin's compile
    assert isinstance(model.optimizer, kpe.LossScaleOptimizer)
    plain = mlp("float32")
    plain.compile(optimizer="sgd", loss="mse")  # Keras's own compile again
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_auto_scale_loss_false_is_respected():
    model = mlp("mixed_float16")
    kpe.compile(model, "sgd", loss="mse", auto_scale_loss=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_fit_never_lets_the_scale_reach_zero():
    model = mlp("mixed_float16")
    kpe.compile(model, keras.optimizers.SGD(1e-3), loss="mse", run_eagerly=False)
    x = np.ones((8, 4), "float32")
    y = np.full((8, 1), np.inf, "float32")  # every step's gradients are non-finite
    model.fit(x, y, epochs=200, batch_size=8, verbose=0)
    scale = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
    assert scale == 1.0, scale
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_fit_trains_and_keeps_variables_float32():
    model = mlp("mixed_float16")
    kpe.compile(model, keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    losses = model.fit(x, y, epochs=5, batch_size=8, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in model.weights)


def test_optimizer_config_round_trip_and_bad_bounds():
    optimizer = kpe.LossScaleOptimizer(keras.optimizers.SGD(), floor=4.0, ceiling=2.0**20)
    back = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(back) is kpe.LossScaleOptimizer
    assert (back.floor, back.ceiling) == (4.0, 2.0**20)
    with pytest.raises(ValueError, match="floor=0"):
        kpe.LossScaleOptimizer(keras.optimizers.SGD(), floor=0)
