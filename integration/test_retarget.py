"""Retargeting the integration models to another policy, and loading with one."""

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from integration.builders import (
    BUILDERS,
    all_layers,
    as_numpy,
    data,
    layer_policies,
    placed_layers,
)
from keras_policy_ext.testing import TOLERANCES

BACKEND = keras.backend.backend()
CASES = [
    ("mixed_float16", "float32"),
    ("mixed_float16", "mixed_bfloat16"),
    ("float32", "mixed_bfloat16"),
]


def weights(model):
    return [as_numpy(w) for w in model.weights]


@pytest.mark.parametrize("source, target", CASES)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_retarget(name, source, target):
    keras.utils.set_random_seed(0)
    with kpe.config.policy_scope(source):
        model = BUILDERS[name]()
    x, _ = data(name, n=4)
    before = weights(model)
    y = as_numpy(model(x))

    new = kpe.retarget(model, target)

    expected = kpe.DTypePolicy(target)
    assert layer_policies(new) and all(p == expected for p in layer_policies(new))
    assert all(p == kpe.DTypePolicy(source) for p in layer_policies(model))  # untouched
    for old, fresh, saved in zip(model.weights, new.weights, before):
        if keras.backend.is_float_dtype(old.dtype):
            assert keras.backend.standardize_dtype(fresh.dtype) == expected.variable_dtype
        np.testing.assert_array_equal(as_numpy(old), saved)
    y_new = new(x)
    assert keras.backend.standardize_dtype(y_new.dtype) == expected.compute_dtype
    tolerance = max(
        TOLERANCES[kpe.DTypePolicy(source).compute_dtype], TOLERANCES[expected.compute_dtype]
    )
    error = np.max(np.abs(as_numpy(y_new) - y)) / np.max(np.abs(y))
    assert error <= tolerance, error


@pytest.mark.parametrize("target", ["float32", "mixed_bfloat16"])
def test_load_a_mixed_float16_file_as_another_policy(target, tmp_path):
    with kpe.config.policy_scope("mixed_float16"):
        model = BUILDERS["functional_conv"]()
    path = tmp_path / "model.keras"
    model.save(path)
    x, _ = data("functional_conv", n=4)
    loaded = kpe.load_model(path, target)
    assert all(p == kpe.DTypePolicy(target) for p in layer_policies(loaded))
    y, y_new = as_numpy(model(x)), as_numpy(loaded(x))
    assert np.max(np.abs(y_new - y)) / np.max(np.abs(y)) <= TOLERANCES["bfloat16"]


class NoConfig(keras.Model):
    """A subclassed model whose constructor argument is not in its config."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)


def test_a_model_that_cannot_rebuild_itself_is_a_clear_error():
    model = NoConfig(3)
    model(np.ones((1, 4), "float32"))
    with pytest.raises(ValueError, match="cannot be rebuilt from its get_config"):
        kpe.retarget(model, "float32")


def test_nested_models_and_wrapped_layers_follow_the_new_policy():
    with kpe.config.policy_scope("mixed_float16"):
        inner = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)])
        inputs = keras.Input((5, 4))
        x = keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True))(inner(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2)(x))
    new = kpe.retarget(model, "mixed_bfloat16")
    found = layer_policies(new)
    assert len(found) == len(layer_policies(model)) >= 6  # Bidirectional's GRUs and cells too
    assert all(p == kpe.DTypePolicy("mixed_bfloat16") for p in found)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_retarget_to_rules(name):
    with kpe.config.policy_scope("float32"):
        model = BUILDERS[name]()
    x, _ = data(name, n=4)
    rules = kpe.rules.FLOAT32_NUMERICS.with_default("mixed_bfloat16")
    new = kpe.retarget(model, rules)
    assert not kpe.is_installed()
    for layer in all_layers(new):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        kind = type(layer).__name__
        # MultiHeadAttention's inner Softmax too: the preset reaches sublayers.
        want = (
            "float32" if kind.endswith("Normalization") or kind == "Softmax" else "mixed_bfloat16"
        )
        assert layer.dtype_policy.name == want, (layer.path, kind)
    y, y_new = as_numpy(model(x)), as_numpy(new(x))
    assert np.max(np.abs(y_new - y)) / np.max(np.abs(y)) <= TOLERANCES["bfloat16"]
    report = kpe.testing.check_layer(
        lambda: kpe.retarget(model, rules), x, ["mixed_bfloat16"], rules=rules, train=False
    )
    assert not [f for f in report.findings if f.check in ("variable", "output")], str(report)


def test_kept_layers_keep_their_policies_nested_models_included():
    with kpe.config.policy_scope("mixed_float16"):
        inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")])
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))
    new = kpe.retarget(model, "bfloat16", keep=["inner_dense"])
    policies = {layer.name: layer.dtype_policy.name for layer in placed_layers(new)}
    assert policies["inner_dense"] == "mixed_float16"
    assert policies["head"] == "bfloat16"


@pytest.mark.parametrize(
    "keep, error, words",
    [
        ("head", TypeError, ["keep='head'", "collection of layer names"]),
        (["head", "typo"], ValueError, ["['typo']", "'head'"]),
    ],
)
def test_bad_keep_is_a_clear_error(keep, error, words):
    with kpe.config.policy_scope("mixed_float16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="head")])
    with pytest.raises(error) as raised:
        kpe.retarget(model, "float32", keep=keep)
    assert all(w in str(raised.value) for w in words), str(raised.value)
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")  # global state untouched


ROLE = "p=bf16,c=f32"  # a policy Keras has no name for


@pytest.mark.parametrize("name", ["sequential_mlp", "functional_conv", "attention", "subclassed"])
def test_retarget_from_and_to_a_role_named_policy(name):
    with kpe.config.policy_scope(ROLE):
        model = BUILDERS[name]()
    x, _ = data(name, n=4)
    exported = kpe.retarget(model, "float32")
    assert all(p.name == "float32" for p in layer_policies(exported))
    # bfloat16 variables widen to float32 exactly: the same float32 computation.
    np.testing.assert_allclose(as_numpy(exported(x)), as_numpy(model(x)), rtol=1e-6, atol=1e-6)
    back = kpe.retarget(exported, ROLE)
    assert all(p == kpe.DTypePolicy(ROLE) for p in layer_policies(back))
    np.testing.assert_array_equal(as_numpy(back(x)), as_numpy(model(x)))
    assert not kpe.is_installed()


@pytest.mark.parametrize(
    "policy",
    [
        "int32",
        "bool",
        kpe.Rules([kpe.Rule("int8", layer=keras.layers.Dense)], default="float32"),
    ],
    ids=["int32", "bool", "rules_with_int8"],
)
def test_retarget_to_a_policy_that_cannot_hold_the_weights_is_a_value_error(policy):
    with kpe.config.policy_scope("float32"):
        model = BUILDERS["sequential_mlp"]()
    with pytest.raises(ValueError) as raised:
        kpe.retarget(model, policy)
    message = str(raised.value)
    assert "cannot hold" in message and repr(model.name) in message, message
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")
    assert not kpe.is_installed()


def test_retarget_that_would_overflow_a_weight_is_a_value_error():
    with kpe.config.policy_scope("float32"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="big")])
    model.layers[0].kernel.assign(np.full((2, 2), 1e5, "float32"))  # above float16's 65504
    with pytest.raises(ValueError) as raised:
        kpe.retarget(model, "float16")
    assert "big/kernel" in str(raised.value) and "float16" in str(raised.value)
    assert kpe.retarget(model, "mixed_float16").layers[0].kernel.dtype == "float32"


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: kpe.retarget(5, "float32"), ["model=5", "keras.Model"]),
        (lambda m: kpe.retarget(None, "float32"), ["model=None", "keras.Model"]),
        (lambda m: kpe.retarget(keras.layers.Dense(2), "float32"), ["Dense", "keras.Model"]),
        (lambda m: kpe.retarget(m, 5), ["policy=5", "Rules"]),
        (lambda m: kpe.retarget(m, ["float32"]), ["policy=['float32']", "Rules"]),
        (lambda m: kpe.retarget(m, "float32", keep=5), ["keep=5", "collection of layer names"]),
        (lambda m: kpe.retarget(m, "float32", keep=[5]), ["keep=[5]", "collection of layer names"]),
    ],
)
def test_bad_arguments_of_retarget_are_type_errors(call, words):
    with kpe.config.policy_scope("mixed_float16"):
        model = BUILDERS["sequential_mlp"]()
    with pytest.raises(TypeError) as raised:
        call(model)
    assert all(w in str(raised.value) for w in words), str(raised.value)
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")


@pytest.mark.parametrize(
    "policy, words",
    [
        ("params=float32,compute=int32", ["compute dtype int32", "cannot run float layers"]),
        ("int8_from_float32", ["quantized", "model.quantize('int8')"]),
        (
            keras.dtype_policies.DTypePolicyMap(default_policy="float32"),
            ["DTypePolicyMap", "Rules.from_dtype_policy_map"],
        ),
    ],
    ids=["int_compute", "quantized", "policy_map"],
)
def test_retarget_to_a_policy_it_cannot_place_is_a_value_error(policy, words):
    with kpe.config.policy_scope("float32"):
        model = BUILDERS["sequential_mlp"]()
    with pytest.raises(ValueError) as raised:
        kpe.retarget(model, policy)
    assert all(w in str(raised.value) for w in words), str(raised.value)
