import copy
import pickle

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.policy import DTYPE_NAMES, MIXED_POLICIES

KERAS_NAMES = [*MIXED_POLICIES, *kpe.internals.allowed_dtypes(), "int"]


def test_name_table_matches_keras():
    assert sorted(DTYPE_NAMES) == sorted(kpe.internals.allowed_dtypes())


@pytest.mark.parametrize("name", KERAS_NAMES)
def test_dtypes_match_keras_for_every_name(name):
    ours, theirs = kpe.DTypePolicy(name), keras.DTypePolicy(name)
    assert ours.name == theirs.name == name
    assert ours.compute_dtype == theirs.compute_dtype
    assert ours.variable_dtype == theirs.variable_dtype
    assert ours.quantization_mode is None


def test_is_a_keras_policy_and_float_alias():
    policy = kpe.DTypePolicy("mixed_float16")
    assert isinstance(policy, keras.DTypePolicy)
    assert kpe.FloatDTypePolicy is kpe.DTypePolicy
    assert repr(policy) == '<DTypePolicy "mixed_float16">'


def test_none_takes_the_global_name():
    kpe.config.set_dtype_policy("mixed_bfloat16")
    assert kpe.DTypePolicy().name == "mixed_bfloat16"
    with kpe.config.policy_scope("float16"):
        assert kpe.DTypePolicy(None).name == "float16"


@pytest.mark.parametrize("bad", [3, 1.5, ["float32"], b"float32"])
def test_non_string_name_is_a_type_error(bad):
    with pytest.raises(TypeError, match="'name' must be a string") as info:
        kpe.DTypePolicy(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["float33", "mixed_float32", "", "Float32"])
def test_unknown_name_is_a_value_error_naming_the_choices(bad):
    with pytest.raises(ValueError) as info:
        kpe.DTypePolicy(bad)
    message = str(info.value)
    with pytest.raises(ValueError) as keras_info:
        keras.DTypePolicy(bad)
    # Code matching Keras's message keeps working: ours starts with it.
    assert message.startswith(str(keras_info.value))
    assert f"name={bad!r}" in message
    for choice in ("mixed_float16", "mixed_bfloat16", "float32", "bfloat16"):
        assert choice in message


def test_quantized_name_points_to_dtype_policies_get():
    with pytest.raises(ValueError, match="dtype_policies.get"):
        kpe.DTypePolicy("int8_from_float32")


EQUAL_PAIRS = [
    ("float32", "float32"),
    ("mixed_float16", "mixed_float16"),
    ("mixed_bfloat16", "mixed_bfloat16"),
]


@pytest.mark.parametrize("a, b", EQUAL_PAIRS)
def test_equality_is_symmetric_with_keras(a, b):
    ours, theirs = kpe.DTypePolicy(a), keras.DTypePolicy(b)
    assert ours == theirs and theirs == ours
    assert not (ours != theirs) and not (theirs != ours)
    assert ours == kpe.DTypePolicy(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("float32", "float16"),
        ("mixed_float16", "float16"),
        ("mixed_bfloat16", "mixed_float16"),
        ("bfloat16", "mixed_bfloat16"),
    ],
)
def test_different_dtypes_are_unequal_both_ways(a, b):
    ours, theirs = kpe.DTypePolicy(a), keras.DTypePolicy(b)
    assert ours != theirs and theirs != ours
    assert ours != kpe.DTypePolicy(b)


def test_equality_is_by_dtypes_not_spelling():
    int_policy = kpe.DTypePolicy("int")
    assert int_policy == kpe.DTypePolicy(int_policy.compute_dtype)
    assert hash(int_policy) == hash(kpe.DTypePolicy(int_policy.compute_dtype))


def test_never_equal_to_quantized_maps_or_non_policies():
    policy = kpe.DTypePolicy("float32")
    quantized = keras.dtype_policies.get("int8_from_float32")
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy="float32")
    for other in (quantized, policy_map, "float32", None, 1):
        assert policy != other and other != policy
        assert not (policy == other) and not (other == policy)


def test_hash_is_consistent_with_equality():
    policies = [kpe.DTypePolicy(n) for n in KERAS_NAMES]
    for a in policies:
        for b in policies:
            if a == b:
                assert hash(a) == hash(b)
    assert len({kpe.DTypePolicy("mixed_float16"), kpe.DTypePolicy("mixed_float16")}) == 1
    assert {kpe.DTypePolicy("float16"): 1}[kpe.DTypePolicy("float16")] == 1


def test_immutable():
    policy = kpe.DTypePolicy("float32")
    for attr in (*kpe.internals.POLICY_FIELDS, "name", "anything"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(policy, attr, "float16")
    with pytest.raises(AttributeError, match="immutable"):
        delattr(policy, kpe.internals.POLICY_FIELDS[0])
    assert policy.compute_dtype == "float32"


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16", "int"])
def test_pickle_copy_and_config_round_trip(name):
    policy = kpe.DTypePolicy(name)
    for clone in (
        pickle.loads(pickle.dumps(policy)),
        copy.copy(policy),
        copy.deepcopy(policy),
        kpe.DTypePolicy.from_config(policy.get_config()),
        kpe.DTypePolicy(str(policy.name)),
    ):
        assert type(clone) is kpe.DTypePolicy
        assert clone == policy and clone.name == policy.name
        assert hash(clone) == hash(policy)
    assert policy.get_config() == {"name": name}


def test_stock_layers_keep_the_policy_object():
    policy = kpe.DTypePolicy("mixed_bfloat16")
    layer = keras.layers.Dense(3, dtype=policy)
    assert layer.dtype_policy is policy
    layer.build((2, 4))
    assert layer.compute_dtype == "bfloat16"
    assert layer.variable_dtype == "float32"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"


def test_float8_dtype_names_are_plain_policies_not_quantized_ones():
    for name in ("float8_e4m3fn", "float8_e5m2", "int8"):
        policy = kpe.dtype_policies.get(name)
        assert type(policy) is kpe.DTypePolicy and policy.compute_dtype == name
