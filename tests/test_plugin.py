import threading

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext import plugin

PUBLIC = [
    (keras.config, "dtype_policy"),
    (keras.config, "set_dtype_policy"),
    (keras.mixed_precision, "dtype_policy"),
    (keras.mixed_precision, "global_policy"),
    (keras.mixed_precision, "set_dtype_policy"),
    (keras.mixed_precision, "set_global_policy"),
    (keras.dtype_policies, "get"),
]


def snapshot():
    return {(path, a): getattr(plugin.owner(path), a) for path, a, _ in plugin._TARGETS}


def test_install_and_uninstall_are_idempotent_and_restore_keras_exactly():
    before = snapshot()
    kpe.install()
    kpe.install()
    assert kpe.is_installed()
    patched = snapshot()
    assert all(patched[k] is not before[k] for k in before)
    kpe.uninstall()
    kpe.uninstall()
    assert not kpe.is_installed()
    assert snapshot() == before


def test_public_keras_names_are_kpe_s_while_installed():
    with kpe.installed():
        assert keras.config.dtype_policy is kpe.config.dtype_policy
        assert keras.config.set_dtype_policy is kpe.config.set_dtype_policy
        assert keras.mixed_precision.set_global_policy is kpe.config.set_dtype_policy
        assert keras.dtype_policies.get is kpe.dtype_policies.get
    for module, attr in PUBLIC:
        assert getattr(module, attr).__module__.startswith("keras.")


def test_seed_example_runs_verbatim_with_kpe_policies():
    kpe.install()
    keras.config.set_dtype_policy("mixed_float16")
    layer1 = keras.layers.Dense(10)
    assert repr(layer1.dtype_policy) == '<DTypePolicy "mixed_float16">'
    layer2 = keras.layers.Dense(10, dtype="float32")
    assert repr(layer2.dtype_policy) == '<DTypePolicy "float32">'
    keras.config.set_dtype_policy("float32")
    assert type(layer1.dtype_policy) is type(layer2.dtype_policy) is kpe.DTypePolicy
    assert kpe.config.dtype_policy().name == "float32"


def test_legacy_names_and_dtype_none():
    kpe.install()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("mixed_bfloat16")
    assert keras.mixed_precision.global_policy() is kpe.config.dtype_policy()
    layer = keras.layers.Dense(2, dtype=None)
    assert layer.dtype_policy is kpe.config.dtype_policy()
    assert keras.DTypePolicy().name == "mixed_bfloat16"


def test_keras_bad_input_still_raises_keras_s_error_and_changes_nothing():
    kpe.install()
    keras.config.set_dtype_policy("mixed_bfloat16")
    for bad in (None, 3, "float33"):
        with pytest.raises(ValueError):
            keras.config.set_dtype_policy(bad)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"


def test_default_reaches_stock_layers_in_every_thread():
    kpe.install()
    keras.config.set_dtype_policy("mixed_bfloat16")
    barrier = threading.Barrier(3)
    seen = []

    def worker():
        barrier.wait()
        layer = keras.layers.Dense(2)
        y = layer(np.ones((1, 3), "float32"))
        seen.append((layer.dtype_policy.name, keras.backend.standardize_dtype(y.dtype)))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [("mixed_bfloat16", "bfloat16")] * 3


def test_without_the_plugin_other_threads_keep_keras_s_default():
    """The gap the plugin closes: Keras's own global is per thread."""
    kpe.config.set_dtype_policy("mixed_bfloat16")
    seen = []
    t = threading.Thread(target=lambda: seen.append(keras.layers.Dense(2).dtype_policy.name))
    t.start()
    t.join()
    assert seen == ["float32"]


def test_scopes_reach_stock_layers_per_thread():
    kpe.install()
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name):
        with kpe.config.policy_scope(name):
            barrier.wait()
            seen[name] = keras.layers.Dense(2).dtype_policy.name

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("float16", "mixed_float16")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"float16": "float16", "mixed_float16": "mixed_float16"}


def test_quantized_policies_stay_keras_s_under_the_plugin():
    kpe.install()
    policy = keras.dtype_policies.get("int8_from_float32")
    assert isinstance(policy, keras.dtype_policies.QuantizedDTypePolicy)


def test_installed_context_leaves_a_prior_install_alone():
    kpe.install()
    with kpe.installed():
        pass
    assert kpe.is_installed()


def test_missing_keras_internal_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(
        plugin, "_TARGETS", plugin._TARGETS + (("keras.config", "no_such_name", print),)
    )
    with pytest.raises(RuntimeError, match=r"keras\.config\.no_such_name") as info:
        kpe.install()
    assert keras.__version__ in str(info.value)
    assert not kpe.is_installed()
    assert keras.config.dtype_policy.__module__.startswith("keras.")
