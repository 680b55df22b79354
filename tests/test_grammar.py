import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.grammar import DTYPE_ALIASES

FLOATS = ["float16", "bfloat16", "float32", "float64"]


@pytest.mark.parametrize("compute", FLOATS)
@pytest.mark.parametrize("params", FLOATS)
def test_every_role_pair_round_trips_through_its_name(params, compute):
    policy = kpe.DTypePolicy(f"params={params},compute={compute}")
    assert (policy.variable_dtype, policy.compute_dtype) == (params, compute)
    assert kpe.DTypePolicy(str(policy)) == policy
    assert kpe.DTypePolicy(str(policy)).name == policy.name == str(policy)
    assert kpe.DTypePolicy.from_config(policy.get_config()) == policy


@pytest.mark.parametrize(
    "spec, name",
    [
        ("p=f32,c=f16", "mixed_float16"),
        ("params=float32,compute=bfloat16", "mixed_bfloat16"),
        ("c=bf16, p=f32", "mixed_bfloat16"),
        ("p=half,c=half", "float16"),
        ("p=double", "float64"),
        ("c=single", "float32"),
        ("p=f64,c=f32", "params=float64,compute=float32"),
    ],
)
def test_short_forms_and_canonical_names(spec, name):
    assert kpe.DTypePolicy(spec).name == name


def test_equal_to_keras_s_policy_of_the_same_dtypes():
    assert kpe.DTypePolicy("p=f32,c=f16") == keras.DTypePolicy("mixed_float16")
    assert keras.DTypePolicy("mixed_float16") == kpe.DTypePolicy("p=f32,c=f16")


def test_every_keras_name_round_trips():
    for name in [
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "mixed_float16",
        "mixed_bfloat16",
        "int32",
    ]:
        policy = kpe.DTypePolicy(name)
        assert kpe.DTypePolicy(str(policy)) == policy and str(policy) == name


@pytest.mark.parametrize(
    "spec, words",
    [
        ("output=f32,c=f16", ["bad key 'output'", "params", "compute"]),
        ("p=f32,c=f17", ["bad dtype 'f17'", "'c'", "bf16"]),
        ("p=f32,p=f16", ["'p' is given twice"]),
        ("p=f32,", ["bad key ''"]),
        ("p:f32=x", ["bad key 'p:f32'"]),
    ],
)
def test_bad_specs_are_value_errors_naming_the_problem(spec, words):
    with pytest.raises(ValueError) as info:
        kpe.DTypePolicy(spec)
    for word in [repr(spec), *words]:
        assert word in str(info.value)


def test_aliases_are_all_floating_dtypes():
    assert set(DTYPE_ALIASES.values()) == set(FLOATS)


def test_stock_layers_compute_in_the_spec_s_dtypes():
    with kpe.config.policy_scope("p=f32,c=bf16"):
        layer = keras.layers.Dense(3)
    y = layer(np.ones((2, 4), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    with kpe.installed():
        assert keras.layers.Dense(3, dtype="p=f64,c=f32").dtype_policy.variable_dtype == "float64"
