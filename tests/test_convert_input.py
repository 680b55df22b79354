import keras
import numpy as np
import pytest
from keras import ops

import keras_policy_ext as kpe

POLICY = kpe.DTypePolicy("mixed_bfloat16")
KERAS_POLICY = keras.DTypePolicy("mixed_bfloat16")


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def inputs():
    """(label, factory) pairs: every kind of input `Layer.__call__` passes."""
    return [
        ("tensor_f32", lambda: ops.ones((2, 3), "float32")),
        ("tensor_f16", lambda: ops.ones((2, 3), "float16")),
        ("tensor_bf16", lambda: ops.ones((2, 3), "bfloat16")),
        ("tensor_i32", lambda: ops.ones((2, 3), "int32")),
        ("tensor_bool", lambda: ops.ones((2, 3), "bool")),
        ("numpy_f32", lambda: np.ones((2, 3), "float32")),
        ("numpy_f64", lambda: np.ones((2, 3), "float64")),
        ("numpy_i64", lambda: np.ones((2, 3), "int64")),
        ("numpy_bool", lambda: np.ones((2, 3), bool)),
        ("numpy_scalar", lambda: np.float32(2.0)),
        ("keras_tensor_f32", lambda: keras.KerasTensor((2, 3), "float32")),
        ("keras_tensor_i32", lambda: keras.KerasTensor((2, 3), "int32")),
        ("variable", lambda: keras.Variable(np.ones(3, "float32"))),
    ]


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("target", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("label, make", inputs(), ids=[i[0] for i in inputs()])
def test_same_result_dtype_as_keras(label, make, target, autocast):
    x = make()
    ours = POLICY.convert_input(x, autocast, target)
    theirs = KERAS_POLICY.convert_input(x, autocast, target)
    assert type(ours) is type(theirs)
    assert dtype_of(ours) == dtype_of(theirs)
    assert tuple(ours.shape) == tuple(theirs.shape)


def test_casts_floating_tensors_when_autocast():
    x = ops.ones((2, 3), "float32")
    y = POLICY.convert_input(x, True, "bfloat16")
    assert dtype_of(y) == "bfloat16"
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(y, "float32")), 1.0)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_never_touches_integer_or_boolean_tensors(dtype):
    x = ops.zeros((4,), dtype)
    assert POLICY.convert_input(x, True, "bfloat16") is x


def test_returns_the_input_itself_when_nothing_to_do():
    x = ops.ones((2,), "bfloat16")
    assert POLICY.convert_input(x, True, "bfloat16") is x
    f32 = ops.ones((2,), "float32")
    assert POLICY.convert_input(f32, False, "bfloat16") is f32
    symbolic = keras.KerasTensor((None, 2), "bfloat16")
    assert POLICY.convert_input(symbolic, True, "bfloat16") is symbolic


@pytest.mark.parametrize("scalar", [1.5, 2, True, None, "text"])
def test_python_scalars_and_non_arrays_are_returned_as_they_are(scalar):
    assert POLICY.convert_input(scalar, True, "bfloat16") is scalar


def test_keras_tensors_cast_symbolically():
    x = keras.KerasTensor((None, 3), "float32")
    y = POLICY.convert_input(x, True, "float16")
    assert keras.backend.is_keras_tensor(y)
    assert y.dtype == "float16" and y.shape == (None, 3)


def test_numpy_arrays_become_backend_tensors():
    y = POLICY.convert_input(np.ones(3, "float32"), True, "bfloat16")
    assert ops.is_tensor(y) and dtype_of(y) == "bfloat16"
    z = POLICY.convert_input(np.arange(3), True, "bfloat16")
    assert ops.is_tensor(z) and "int" in dtype_of(z)


def test_dtype_argument_accepts_backend_dtype_objects():
    x = ops.ones((2,), "float32")
    target = ops.ones((1,), "float16").dtype
    assert dtype_of(POLICY.convert_input(x, True, target)) == "float16"


def test_layer_call_casts_inputs_and_computes_in_compute_dtype():
    layer = keras.layers.Dense(3, dtype=POLICY)
    y = layer(np.ones((2, 4), "float32"))
    assert dtype_of(y) == "bfloat16"
    symbolic = layer(keras.Input((4,)))
    assert symbolic.dtype == "bfloat16"
