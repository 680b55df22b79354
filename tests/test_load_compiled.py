"""`kpe.load_model` of a file saved compiled: the model comes back compiled.

Whether the file carries rules (`save_model` stored them) or a `policy=` is
given, the model goes through `retarget`; it keeps its optimizer (with its
state: step count, moments, loss scale), its loss and its metrics, so that
training continues as it would have on the original model.
"""

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 1)).astype("float32")


def trained(policy, rules=None, optimizer=None):
    """A small model, compiled and trained two epochs under `policy` (and `rules`)."""
    keras.utils.set_random_seed(0)
    with kpe.installed(), kpe.policy_scope(policy, rules=rules):
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.LayerNormalization(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(
            optimizer=optimizer or keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"]
        )
    model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model


def as_numpy(values):
    return [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in values]


def assert_same_training_state(loaded, original):
    assert loaded.compiled, "load_model returned a model that is not compiled"
    assert type(loaded.optimizer) is type(original.optimizer)
    assert int(loaded.optimizer.iterations) == int(original.optimizer.iterations) > 0
    assert len(loaded.optimizer.variables) == len(original.optimizer.variables)
    for new, old in zip(
        as_numpy(loaded.optimizer.variables), as_numpy(original.optimizer.variables)
    ):
        np.testing.assert_array_equal(new, old)
    assert loaded.loss == original.loss == "mse"


def assert_trains_on_identically(loaded, original):
    logs = [
        m.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        for m in (original, loaded)
    ]
    assert set(logs[0]) == set(logs[1]) == {"loss", "mae"}
    np.testing.assert_allclose(logs[1]["loss"], logs[0]["loss"], rtol=1e-6)
    np.testing.assert_allclose(logs[1]["mae"], logs[0]["mae"], rtol=1e-6)
    for new, old in zip(as_numpy(loaded.weights), as_numpy(original.weights)):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-7)
    assert int(loaded.optimizer.iterations) == int(original.optimizer.iterations)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_model_saved_with_rules_loads_compiled_and_trains_on(tmp_path, policy):
    original = trained(policy, rules=kpe.rules.FLOAT32_NUMERICS)
    path = tmp_path / "model.keras"
    kpe.save_model(original, path)
    assert kpe.saving.stored_rules(path) is not None  # load_model goes through retarget
    loaded = kpe.load_model(path)
    assert_same_training_state(loaded, original)
    assert_trains_on_identically(loaded, original)


def test_a_model_loaded_with_its_own_policy_loads_compiled_and_trains_on(tmp_path):
    original = trained("mixed_bfloat16")
    path = tmp_path / "model.keras"
    original.save(path)
    loaded = kpe.load_model(path, policy="mixed_bfloat16")
    assert_same_training_state(loaded, original)
    assert_trains_on_identically(loaded, original)


def test_a_model_retargeted_on_load_keeps_its_optimizer_state_loss_and_metrics(tmp_path):
    original = trained("mixed_bfloat16", optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
    path = tmp_path / "model.keras"
    original.save(path)
    loaded = kpe.load_model(path, policy="float32")
    assert [layer.dtype_policy.name for layer in loaded.layers] == ["float32"] * 3
    assert_same_training_state(loaded, original)
    history = loaded.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    assert set(history) == {"loss", "mae"} and np.isfinite(history["loss"]).all()
    assert int(loaded.optimizer.iterations) == int(original.optimizer.iterations) + 4


def test_compile_false_still_loads_uncompiled(tmp_path):
    original = trained("mixed_bfloat16")
    path = tmp_path / "model.keras"
    original.save(path)
    assert not kpe.load_model(path, policy="float32", compile=False).compiled


def test_a_model_retargeted_to_float16_gets_loss_scaling_and_keeps_its_optimizer_state(tmp_path):
    original = trained("float32", optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
    path = tmp_path / "model.keras"
    original.save(path)
    loaded = kpe.load_model(path, policy="mixed_float16")
    assert isinstance(loaded.optimizer, kpe.LossScaleOptimizer)  # the dtypes now need it
    inner = loaded.optimizer.inner_optimizer
    assert int(inner.iterations) == int(original.optimizer.iterations) > 0
    for new, old in zip(as_numpy(inner.variables), as_numpy(original.optimizer.variables)):
        np.testing.assert_array_equal(new, old)
    assert loaded.loss == "mse"
