"""The built-in zoo: stock Keras layers a user meets most, with their inputs.

Each entry is a layer factory (called inside a policy scope, so the layer
takes the scope's policy) and a function of a numpy `Generator` giving the
inputs: one array, or a tuple of positional arguments. `DEFAULT_POLICIES` are
the policies the zoo is checked under by default.

Importing this module, or naming and selecting entries, loads no Keras: the
process that starts the backends' processes checks the names it is given
without paying for a backend it never runs. A factory loads Keras when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import keras

DEFAULT_POLICIES = (
    "float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16",
)  # fmt: skip


class _Layers:
    """`keras.layers`, imported on first use (that is, when a factory runs)."""

    def __getattr__(self, name: str) -> Any:
        import keras

        return getattr(keras.layers, name)


L = _Layers()


class ZooEntry(NamedTuple):
    """A named layer factory and its inputs."""

    name: str
    factory: Callable[[], keras.Layer]
    inputs: Callable[[np.random.Generator], Any]


def _normal(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.normal(size=shape).astype("float32")


def _ints(high: int, *shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(0, high, size=shape).astype("int32")


def _pair(*shape: int, as_list: bool = False) -> Callable[[np.random.Generator], Any]:
    def make(rng: np.random.Generator) -> Any:
        a, b = (rng.normal(size=shape).astype("float32") for _ in range(2))
        return ([a, b],) if as_list else (a, b)

    return make


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("Dense", lambda: L.Dense(8), _normal(2, 16)),
        ZooEntry("EinsumDense", lambda: L.EinsumDense("ab,bc->ac", 8), _normal(2, 16)),
        ZooEntry("Conv1D", lambda: L.Conv1D(4, 3), _normal(2, 8, 3)),
        ZooEntry("Conv2D", lambda: L.Conv2D(4, 3), _normal(2, 6, 6, 3)),
        ZooEntry("Conv3D", lambda: L.Conv3D(2, 3), _normal(2, 4, 4, 4, 2)),
        ZooEntry("Conv2DTranspose", lambda: L.Conv2DTranspose(4, 3), _normal(2, 5, 5, 3)),
        ZooEntry("DepthwiseConv2D", lambda: L.DepthwiseConv2D(3), _normal(2, 6, 6, 3)),
        ZooEntry("SeparableConv2D", lambda: L.SeparableConv2D(4, 3), _normal(2, 6, 6, 3)),
        ZooEntry("SimpleRNN", lambda: L.SimpleRNN(4), _normal(2, 5, 3)),
        ZooEntry("LSTM", lambda: L.LSTM(4), _normal(2, 5, 3)),
        ZooEntry("GRU", lambda: L.GRU(4), _normal(2, 5, 3)),
        ZooEntry("Bidirectional", lambda: L.Bidirectional(L.GRU(4)), _normal(2, 5, 3)),
        ZooEntry(
            "MultiHeadAttention",
            lambda: L.MultiHeadAttention(num_heads=2, key_dim=4),
            _pair(2, 5, 8),
        ),
        ZooEntry(
            "GroupQueryAttention",
            lambda: L.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2),
            _pair(2, 5, 8),
        ),
        ZooEntry("Attention", lambda: L.Attention(), _pair(2, 5, 8, as_list=True)),
        ZooEntry("LayerNormalization", lambda: L.LayerNormalization(), _normal(2, 8)),
        ZooEntry("BatchNormalization", lambda: L.BatchNormalization(), _normal(4, 8)),
        ZooEntry("GroupNormalization", lambda: L.GroupNormalization(groups=2), _normal(2, 8)),
        ZooEntry("UnitNormalization", lambda: L.UnitNormalization(), _normal(2, 8)),
        ZooEntry("RMSNormalization", lambda: L.RMSNormalization(), _normal(2, 8)),
        ZooEntry("Embedding", lambda: L.Embedding(20, 4), _ints(20, 2, 5)),
        ZooEntry(
            "CategoryEncoding",
            lambda: L.CategoryEncoding(num_tokens=6, output_mode="multi_hot"),
            _ints(6, 2, 3),
        ),
        ZooEntry("Softmax", lambda: L.Softmax(), _normal(2, 8)),
        ZooEntry("Activation", lambda: L.Activation("gelu"), _normal(2, 8)),
        ZooEntry("Dropout", lambda: L.Dropout(0.5), _normal(2, 8)),
        ZooEntry("GaussianNoise", lambda: L.GaussianNoise(0.1), _normal(2, 8)),
        ZooEntry("MaxPooling2D", lambda: L.MaxPooling2D(), _normal(2, 4, 4, 3)),
        ZooEntry("AveragePooling1D", lambda: L.AveragePooling1D(2), _normal(2, 6, 3)),
        ZooEntry("GlobalAveragePooling2D", lambda: L.GlobalAveragePooling2D(), _normal(2, 4, 4, 3)),
        ZooEntry("Add", lambda: L.Add(), _pair(2, 8, as_list=True)),
        ZooEntry("Concatenate", lambda: L.Concatenate(), _pair(2, 8, as_list=True)),
        ZooEntry("Rescaling", lambda: L.Rescaling(0.5), _normal(2, 8)),
    ]
}


def select(patterns: list[str] | None = None) -> list[ZooEntry]:
    """Zoo entries named by `patterns` (all of them when there are none).

    A pattern that is a zoo name (case-insensitive) picks that entry; any
    other pattern picks every entry whose name contains it.

    >>> from keras_policy_ext.testing.zoo import select
    >>> [e.name for e in select(["dense", "conv1", "pooling2"])]
    ['Dense', 'Conv1D', 'MaxPooling2D', 'GlobalAveragePooling2D']
    """
    if not patterns:
        return list(ZOO.values())
    names = {name.lower() for name in ZOO}

    def picks(pattern: str, name: str) -> bool:
        p, n = pattern.lower(), name.lower()
        return p == n if p in names else p in n

    return [e for e in ZOO.values() if any(picks(p, e.name) for p in patterns)]
