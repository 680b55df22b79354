"""Model-level helpers: the layers nested in a model, float32 outputs.

>>> import keras, keras_policy_ext as kpe
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> [type(l).__name__ for l in kpe.models.sublayers(model)]
['InputLayer', 'Dense']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_policy_ext import internals
from keras_policy_ext.policy import DTypePolicy


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer nested in `layer` (not `layer` itself), depth first.

    Args:
        layer: a Keras layer or model.

    Returns:
        A list of layers, sublayers of sublayers included.

    >>> import keras, keras_policy_ext as kpe
    >>> mha = keras.layers.MultiHeadAttention(2, 4)
    >>> _ = mha(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 3, 8)))
    >>> sorted({type(l).__name__ for l in kpe.models.sublayers(mha)})
    ['Dropout', 'EinsumDense', 'Softmax']
    """
    return internals.sublayers(layer)


def with_float32_outputs(model: keras.Model) -> keras.Model:
    """`model` with each output passed through a float32 linear `Activation`.

    What users write by hand today (`Activation("linear", dtype="float32")`):
    losses and metrics then see float32 under a mixed policy. Functional and
    Sequential models; the layers are shared, not copied. The inputs and
    outputs keep their structure (a dict of outputs stays a dict with the same
    keys, nested lists stay nested), so `compile(loss={...})` still applies.

    Args:
        model: a functional or Sequential `keras.Model`.

    Returns:
        A new `keras.Model` sharing `model`'s layers, with float32 outputs.

    Raises:
        TypeError: a subclassed model (it has no symbolic outputs).
        ValueError: a Sequential model without inputs yet.

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("mixed_float16"):
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> wrapped = kpe.with_float32_outputs(model)
    >>> keras.backend.standardize_dtype(wrapped(keras.ops.ones((1, 3))).dtype)
    'float32'
    >>> inputs = keras.Input((3,))
    >>> with kpe.config.policy_scope("mixed_float16"):
    ...     heads = keras.Model(inputs, {"score": keras.layers.Dense(1)(inputs)})
    >>> outputs = kpe.with_float32_outputs(heads)(keras.ops.ones((1, 3)))
    >>> list(outputs), keras.backend.standardize_dtype(outputs["score"].dtype)
    (['score'], 'float32')
    """
    inputs, outputs = _io_structure(model)
    flat = keras.tree.flatten(outputs)
    float32 = [
        keras.layers.Activation("linear", dtype=DTypePolicy("float32"), name=f"{name}_float32")(o)
        for name, o in zip(_output_names(model, flat), flat)
    ]
    return keras.Model(inputs, keras.tree.pack_sequence_as(outputs, float32))


def _io_structure(model: Any) -> tuple[Any, Any]:
    """A functional or Sequential model's inputs and outputs, in their structures."""
    if isinstance(model, keras.Sequential):
        try:
            outputs = model.outputs
            return model.inputs, outputs[0] if len(outputs) == 1 else outputs
        except AttributeError:
            raise ValueError(
                f"Cannot wrap the outputs of {model!r}: this Sequential model has no "
                "inputs yet; start it with keras.Input(...) or build it first."
            ) from None
    # A functional model: `input` / `output` are the structures it was built with.
    if isinstance(model, keras.Model) and hasattr(model, "inputs") and hasattr(model, "outputs"):
        return model.input, model.output
    raise TypeError(
        "kpe.with_float32_outputs expects a functional or Sequential keras.Model "
        f"(a subclassed model has no symbolic outputs). Received: model={model!r}"
    )


def _output_names(model: keras.Model, flat: Sequence[Any]) -> Sequence[str]:
    names = getattr(model, "output_names", None)
    return names if names and len(names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
