import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.roles import DTYPE_ALIASES

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
        ("p=full,c=half,o=half", "mixed_float16"),
    ],
)
def test_short_forms_and_canonical_names(spec, name):
    assert kpe.DTypePolicy(spec).name == name


# jmp's own reading (jmp/_src/policy.py, get_policy): params default to f32,
# compute follows params, output follows compute; a name without "=" is one
# dtype for every role. As (params, compute, output).
JMP = {
    "c=f16": ("float32", "float16", "float16"),
    "c=bf16": ("float32", "bfloat16", "bfloat16"),
    "compute=bfloat16": ("float32", "bfloat16", "bfloat16"),
    "p=f16,c=f16": ("float16", "float16", "float16"),
    "p=f16,c=bf16": ("float16", "bfloat16", "bfloat16"),
    "p=bf16": ("bfloat16", "bfloat16", "bfloat16"),
    "p=f32,c=bf16,o=bf16": ("float32", "bfloat16", "bfloat16"),
    "params=float32,compute=float16,output=float16": ("float32", "float16", "float16"),
    "o=f32": ("float32", "float32", "float32"),
    "p=full,c=full": ("float32", "float32", "float32"),
    "half": ("float16", "float16", "float16"),
    "full": ("float32", "float32", "float32"),
    "f32": ("float32", "float32", "float32"),
    "bf16": ("bfloat16", "bfloat16", "bfloat16"),
    "f16": ("float16", "float16", "float16"),
    "f64": ("float64", "float64", "float64"),
}


@pytest.mark.parametrize("spec", JMP)
def test_specs_mean_what_jmp_makes_of_them(spec):
    params, compute, output = JMP[spec]
    policy = kpe.DTypePolicy(spec)
    assert (policy.variable_dtype, policy.compute_dtype) == (params, compute)
    assert output == compute  # kpe outputs are the compute dtype
    assert kpe.DTypePolicy(str(policy)) == policy and "o=" not in str(policy)
    assert "output" not in str(policy)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("p=f32,c=f16,o=f32", ["output 'float32'", "compute 'float16'", "with_float32_outputs"]),
        ("c=bf16,output=float32", ["output 'float32'", "compute 'bfloat16'"]),
        ("o=f16", ["output 'float16'", "compute 'float32'"]),
    ],
)
def test_an_output_dtype_other_than_compute_is_a_value_error(spec, words):
    with pytest.raises(ValueError) as info:
        kpe.DTypePolicy(spec)
    for word in [repr(spec), *words]:
        assert word in str(info.value)


def test_keras_names_keep_their_spelling_and_are_not_role_specs():
    for name in ["float16", "bfloat16", "float32", "mixed_float16", "mixed_bfloat16", "int"]:
        assert kpe.DTypePolicy(name).name == name
    assert kpe.DTypePolicy("half").name == "float16"  # jmp's name, canonically spelled
    assert kpe.DTypePolicy("full") == keras.DTypePolicy("float32")


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
        ("outputs=f32,c=f16", ["bad key 'outputs'", "params, p, compute, c, output, o"]),
        ("p=f32,c=f17", ["bad dtype 'f17'", "'c'", "bf16"]),
        ("p=f32,p=f16", ["'p' is given twice"]),
        ("p=f32,params=f16", ["'params' is given twice"]),
        ("o=f32,output=f32", ["'output' is given twice"]),
        ("quarter", ["Received: name='quarter'"]),
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
        if not kpe.validate("float64").ok:  # JAX without x64: float64 cannot be honoured
            with pytest.raises(kpe.PolicyRefusedError, match="JAX_ENABLE_X64=1"):
                keras.layers.Dense(3, dtype="p=f64,c=f32")
            return
        assert keras.layers.Dense(3, dtype="p=f64,c=f32").dtype_policy.variable_dtype == "float64"
