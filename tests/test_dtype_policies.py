import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext import dtype_policies


def test_get_none_is_the_policy_in_force():
    assert dtype_policies.get(None) is kpe.config.dtype_policy()
    with kpe.config.policy_scope("mixed_float16") as policy:
        assert dtype_policies.get() is policy


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "bfloat16", "int32"])
def test_get_name_is_a_kpe_policy(name):
    policy = dtype_policies.get(name)
    assert type(policy) is kpe.DTypePolicy and policy.name == name


def test_get_returns_policy_instances_unchanged():
    for policy in (kpe.DTypePolicy("float16"), keras.DTypePolicy("float16")):
        assert dtype_policies.get(policy) is policy


@pytest.mark.parametrize(
    "name, cls",
    [
        ("int8_from_float32", "QuantizedDTypePolicy"),
        ("float8_from_mixed_bfloat16", "QuantizedFloat8DTypePolicy"),
    ],
)
def test_quantized_names_are_keras_s(name, cls):
    policy = dtype_policies.get(name)
    assert type(policy).__name__ == cls
    assert policy == keras.dtype_policies.get(name)


def test_get_dtype_objects():
    assert dtype_policies.get(np.float16) == kpe.DTypePolicy("float16")


def test_get_bad_identifier():
    with pytest.raises(ValueError, match="Cannot interpret `dtype` argument"):
        dtype_policies.get(object())
    with pytest.raises(ValueError, match="float33"):
        dtype_policies.get("float33")


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_serialize_round_trip(name):
    policy = kpe.DTypePolicy(name)
    config = dtype_policies.serialize(policy)
    assert config["registered_name"] == "keras_policy_ext>DTypePolicy"
    for back in (
        dtype_policies.deserialize(config),
        dtype_policies.get(config),
        keras.dtype_policies.deserialize(config),
        keras.saving.deserialize_keras_object(config),
    ):
        assert type(back) is kpe.DTypePolicy and back == policy


def test_keras_float_configs_deserialize_as_kpe_policies():
    config = keras.dtype_policies.serialize(keras.DTypePolicy("mixed_bfloat16"))
    back = dtype_policies.deserialize(config)
    assert type(back) is kpe.DTypePolicy and back.name == "mixed_bfloat16"


def test_keras_quantized_configs_stay_keras_s():
    policy = keras.dtype_policies.get("int8_from_float32")
    back = dtype_policies.deserialize(keras.dtype_policies.serialize(policy))
    assert type(back) is type(policy) and back == policy
