"""The integration models built under rules: every structure, first call, .keras."""

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from integration.builders import (
    BUILDERS,
    ResidualBlock,
    as_numpy,
    data,
    layer_policies,
    placed_layers,
)

RULES = kpe.rules.FLOAT32_NUMERICS


def expected(layer):
    kind = type(layer).__name__
    return "float32" if kind.endswith("Normalization") or kind == "Softmax" else "mixed_float16"


def serialized_policies(model):
    """The policies of the layers Keras writes into a model's config."""
    return [l.dtype_policy for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_layer_follows_its_rule_from_the_first_call(name, tmp_path):
    kpe.install()
    with kpe.config.policy_scope("mixed_float16", rules=RULES):
        model = BUILDERS[name]()
    x, _ = data(name, n=2)
    y = model(x)  # the first call
    for layer in placed_layers(model):
        assert layer.dtype_policy.name == expected(layer), (layer.path, kpe.explain(layer))
        for v in layer.weights:
            if keras.backend.is_float_dtype(v.dtype):
                assert keras.backend.standardize_dtype(v.value.dtype) == "float32"
    last = model.layers[-1]
    assert (
        keras.backend.standardize_dtype(y.dtype)
        == keras.DTypePolicy(last.dtype_policy.name).compute_dtype
    )
    norms = [l for l in placed_layers(model) if expected(l) == "float32"]
    assert all(kpe.explain(l).rule is not None for l in norms)

    path = tmp_path / "model.keras"
    kpe.save_model(model, path)  # model.save, plus the rules it was built under
    # Keras serializes the layers of a functional or Sequential model, not
    # the sublayers a layer builds itself: those come back from their parent.
    if name != "subclassed":
        loaded = keras.saving.load_model(path)
        assert serialized_policies(loaded) == serialized_policies(model)
    # With the stored rules, every layer, sublayers included, gets its policy back.
    assert kpe.saving.stored_rules(path).rules == RULES.rules
    reloaded = kpe.load_model(path)
    assert layer_policies(reloaded) == layer_policies(model)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(reloaded(x), "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32")),
    )


@pytest.mark.parametrize("name", ["sequential_mlp", "functional_conv", "transformer_block"])
def test_layers_the_rules_did_not_place_keep_their_policies_on_reload(name, tmp_path):
    kpe.install()
    with kpe.config.policy_scope("mixed_bfloat16", rules=RULES):
        model = kpe.with_float32_outputs(BUILDERS[name]())
    assert model.layers[-1].dtype_policy.name == "float32"  # explicit, not a rule's
    path = tmp_path / "model.keras"
    kpe.save_model(model, path)
    reloaded = kpe.load_model(path)
    assert layer_policies(reloaded) == layer_policies(model)
    x, _ = data(name, n=2)
    assert keras.backend.standardize_dtype(reloaded(x).dtype) == "float32"


def test_rules_given_to_save_model_place_every_layer_of_a_model_built_without(tmp_path):
    with kpe.config.policy_scope("mixed_float16"):
        model = BUILDERS["sequential_mlp"]()
    path = tmp_path / "model.keras"
    kpe.save_model(model, path, rules=RULES.with_default("mixed_bfloat16"))
    reloaded = kpe.load_model(path)
    want = ["mixed_bfloat16", "float32", "mixed_bfloat16"]  # Dense, LayerNormalization, Dense
    assert [p.name for p in layer_policies(reloaded)] == want


def composite_of(name, model):
    """The layer a class rule targets in the model `name`: one that builds sublayers."""
    if name == "subclassed":
        return model
    return next(l for l in model.layers if isinstance(l, keras.layers.MultiHeadAttention))


@pytest.mark.parametrize("name", ["attention", "transformer_block", "subclassed"])
def test_a_class_rule_on_a_composite_layer_reaches_its_sublayers(name, tmp_path):
    composite_class = ResidualBlock if name == "subclassed" else keras.layers.MultiHeadAttention
    rules = kpe.Rules([kpe.Rule("float32", layer=composite_class)], default="mixed_bfloat16")
    with kpe.installed(), kpe.config.policy_scope(rules=rules):
        model = BUILDERS[name]()
    x, _ = data(name, n=2)
    y = as_numpy(model(x))
    composite = composite_of(name, model)
    inner = placed_layers(composite)
    assert composite.dtype_policy.name == "float32" and inner
    assert [l.dtype_policy.name for l in inner] == ["float32"] * len(inner)
    others = [l for l in placed_layers(model) if l is not composite and l not in inner]
    assert all(l.dtype_policy.name == "mixed_bfloat16" for l in others)

    path = tmp_path / "model.keras"
    kpe.save_model(model, path)
    # (The subclassed block's sublayers get new automatic names when reloaded.)
    built = [(type(l).__name__, l.dtype_policy) for l in placed_layers(model)]
    for loaded in (keras.saving.load_model(path), kpe.load_model(path)):
        assert [(type(l).__name__, l.dtype_policy) for l in placed_layers(loaded)] == built
        np.testing.assert_array_equal(as_numpy(loaded(x)), y)
