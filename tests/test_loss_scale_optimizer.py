"""Loss scaling in fit, keyed on dtypes, with kpe's floored LossScaleOptimizer."""

import builtins
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.loss_scale import optimizer as loss_scale_optimizer

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
    kpe.compile_model(model, "sgd", loss="mse")
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
    kpe.compile_model(model, "sgd", loss="mse", auto_scale_loss=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_fit_never_lets_the_scale_reach_zero():
    model = mlp("mixed_float16")
    kpe.compile_model(model, keras.optimizers.SGD(1e-3), loss="mse", run_eagerly=False)
    x = np.ones((8, 4), "float32")
    y = np.full((8, 1), np.inf, "float32")  # every step's gradients are non-finite
    model.fit(x, y, epochs=200, batch_size=8, verbose=0)
    scale = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
    assert scale == 1.0, scale
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_fit_trains_and_keeps_variables_float32():
    model = mlp("mixed_float16")
    kpe.compile_model(model, keras.optimizers.Adam(1e-2), loss="mse")
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


def test_star_import_leaves_builtins_alone():
    namespace: dict = {}
    exec("from keras_policy_ext import *", namespace)
    imported = {name for name in namespace if name != "__builtins__"}
    assert imported == set(kpe.__all__)
    assert not imported & set(dir(builtins)), imported & set(dir(builtins))
    assert kpe.compile_model is loss_scale_optimizer.compile_model


# Runs in a fresh process where keras_policy_ext cannot be imported: it prints
# what loading a kpe-compiled model gives there, as JSON.
LOAD_WITHOUT_KPE = """
import json, sys


class NoKpe:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "keras_policy_ext":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")


sys.meta_path.insert(0, NoKpe())
import keras, numpy as np

path, x_path = sys.argv[1:]
found = {}
try:
    keras.saving.load_model(path)
except Exception as error:
    found["error"] = [type(error).__name__, str(error)]
model = keras.saving.load_model(path, compile=False)
found["output"] = keras.ops.convert_to_numpy(model(np.load(x_path))).astype("float32").tolist()
found["policies"] = [layer.dtype_policy.name for layer in model.layers]
optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-3))  # Keras's own
model.compile(optimizer=optimizer, loss="mse")
x = np.load(x_path)
found["loss"] = model.fit(x, np.ones((len(x), 1)), verbose=0).history["loss"][-1]
found["scale"] = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
found["kpe"] = sorted(m for m in sys.modules if m.partition(".")[0] == "keras_policy_ext")
print(json.dumps(found))
"""


def test_a_kpe_compiled_model_loads_without_kpe_only_with_compile_false(tmp_path):
    """Documented choice: the optimizer is kpe's, so plain Keras needs `compile=False`."""
    model = mlp("mixed_float16")
    kpe.compile_model(model, keras.optimizers.SGD(1e-3), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, np.ones((8, 1), "float32"), epochs=2, verbose=0)
    path, x_path = tmp_path / "model.keras", tmp_path / "x.npy"
    model.save(path)
    np.save(x_path, x)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_KPE, str(path), str(x_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["kpe"] == []
    kind, message = found["error"]
    assert kind == "TypeError"
    # Keras 3.8's words: "Could not deserialize class ... because its parent module
    # ... cannot be imported"; 3.9 and newer's: "Could not locate class ...".
    assert message.startswith(
        ("Could not locate class 'LossScaleOptimizer'. Make sure custom",
         "Could not deserialize class 'LossScaleOptimizer' because its parent module")
    )  # fmt: skip
    assert "'module': 'keras_policy_ext.loss_scale.optimizer'" in message
    expected = keras.ops.convert_to_numpy(model(x)).astype("float32")
    np.testing.assert_allclose(found["output"], expected, rtol=1e-3)
    assert found["policies"] == ["mixed_float16", "mixed_float16"]
    assert np.isfinite(found["loss"]) and 0 < found["scale"] <= 2.0**15  # trained, loss-scaled

    # Where kpe is imported, the same file loads whole, kpe's optimizer and its state included.
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is kpe.LossScaleOptimizer
    assert (loaded.optimizer.floor, loaded.optimizer.ceiling) == (1.0, 2.0**24)
    for name in ("iterations", "dynamic_scale"):
        saved, back = (getattr(m.optimizer, name) for m in (model, loaded))
        assert keras.ops.convert_to_numpy(back) == keras.ops.convert_to_numpy(saved), name
