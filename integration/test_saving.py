""".keras round trips of models carrying kpe policies, within and across backends."""

import pathlib

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from integration.builders import BUILDERS, as_numpy, data, layer_policies
from keras_policy_ext.backends import BACKENDS

DATA = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize("plugin", [True, False], ids=["plugin", "no_plugin"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float32"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_save_and_load_without_custom_objects(name, policy, plugin, tmp_path):
    with kpe.config.policy_scope(policy):
        model = BUILDERS[name]()
    x, _ = data(name, n=4)
    path = tmp_path / "model.keras"
    model.save(path)
    if plugin:
        kpe.install()
    loaded = keras.saving.load_model(path)
    before, after = layer_policies(model), layer_policies(loaded)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert b == a and b.name == a.name
        # Keras's `Operation.from_config` rebuilds a stock layer's float
        # policy from its name: only the plugin makes that name kpe's.
        if plugin or name == "subclassed":
            assert type(b) is kpe.DTypePolicy
    np.testing.assert_array_equal(as_numpy(loaded(x)), as_numpy(model(x)))


def test_plugin_loads_keras_saved_policies_as_kpe_policies(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")  # Keras's own, no plugin
    model = BUILDERS["sequential_mlp"]()
    keras.config.set_dtype_policy("float32")
    assert type(model.layers[0].dtype_policy) is keras.DTypePolicy
    model.save(tmp_path / "keras.keras")
    with kpe.installed():
        loaded = keras.saving.load_model(tmp_path / "keras.keras")
    for policy in layer_policies(loaded):
        assert type(policy) is kpe.DTypePolicy
        assert policy == kpe.DTypePolicy("mixed_bfloat16")


@pytest.mark.parametrize("source", BACKENDS)
def test_load_a_model_saved_on_another_backend(source):
    if source == keras.backend.backend():
        pytest.skip("same backend: covered by the round-trip tests")
    saved = np.load(DATA / f"{source}.npz")
    kpe.install()
    model = keras.saving.load_model(DATA / f"{source}.keras")
    for policy in layer_policies(model):
        assert type(policy) is kpe.DTypePolicy
        assert policy == kpe.DTypePolicy("mixed_bfloat16")
    y = model(saved["x"])
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    # bfloat16 keeps 8 significant bits: backends may round differently.
    np.testing.assert_allclose(as_numpy(y), saved["y"], rtol=0.05, atol=0.02)
