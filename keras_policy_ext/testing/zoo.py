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

import importlib.util
import inspect
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import keras

DEFAULT_POLICIES = (
    "float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16",
)  # fmt: skip
# The run's seed when none is given (`check_layer`, `keras-policy-ext check --seed`).
DEFAULT_SEED = 0


class _Layers:
    """`keras.layers`, imported on first use (that is, when a factory runs)."""

    def __getattr__(self, name: str) -> Any:
        import keras

        return getattr(keras.layers, name)


L = _Layers()


class ZooEntry(NamedTuple):
    """A named layer factory and its inputs.

    Attributes:
        name: the zoo's name for the entry (`"Dense"`, `"Bidirectional(LSTM)"`).
        factory: builds the layer, with `dtype=None`.
        inputs: makes the layer's inputs from a `numpy.random.Generator`.
        backends: the backends the layer exists on (empty: all).
        requires: modules it needs besides the backend (Keras's
            preprocessing layers that run on TensorFlow).
        output_dtype: the floating dtype the layer's own code returns
            whatever the policy (a float32 head), else `None` (the compute
            dtype).
        since: the first Keras release that has the layer (empty: every
            release kpe supports).

    >>> from keras_policy_ext.testing.zoo import ZOO
    >>> ZOO["Dense"].name, ZOO["Dense"].backends
    ('Dense', ())
    """

    name: str
    factory: Callable[[], keras.Layer]
    inputs: Callable[[np.random.Generator], Any]
    backends: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    output_dtype: str | None = None
    since: str = ""

    def unavailable(self, backend: str) -> str | None:
        """Why the entry cannot run on `backend` in this environment, else `None`.

        >>> from keras_policy_ext.testing.zoo import ZOO
        >>> ZOO["TorchModuleWrapper"].unavailable("jax")
        'TorchModuleWrapper runs on torch only'
        >>> ZOO["Dense"].unavailable("jax") is None
        True
        """
        if self.backends and backend not in self.backends:
            return f"{self.name} runs on {', '.join(self.backends)} only"
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"{self.name} needs {', '.join(missing)}, which is not installed"
        if self.since and _release(version("keras")) < _release(self.since):
            return f"{self.name} came with Keras {self.since}; this is Keras {version('keras')}"
        return None


def _release(text: str) -> tuple[int, ...]:
    """`"3.10.0"` -> `(3, 10, 0)` (read without importing Keras)."""
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _normal(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.normal(size=shape).astype("float32")


def _ints(high: int, *shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(0, high, size=shape).astype("int32")


def _matmul_layer(head: bool = False) -> keras.Layer:
    """A custom layer written the ordinary way: `ops.matmul(x, self.w)` in `call`.

    With `head`, it casts its result to float32, as keras-hub's heads do.
    """
    import keras

    class MatmulLayer(keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")

        def call(self, x: Any) -> Any:
            y = keras.ops.matmul(x, self.w)
            return keras.ops.cast(y, "float32") if head else y

    return MatmulLayer(name="float32_head" if head else None)


def _torch_module() -> keras.Layer:
    # The entry runs on the torch backend only, where Keras has imported torch:
    # taken from there, so that kpe itself imports no backend.
    torch = sys.modules["torch"]
    torch.manual_seed(0)
    # `output_shape` came with Keras 3.10; older releases trace the module instead.
    takes = inspect.signature(L.TorchModuleWrapper).parameters
    shape = {"output_shape": (2, 4)} if "output_shape" in takes else {}
    return L.TorchModuleWrapper(torch.nn.Linear(8, 4), **shape)


def _integer_lookup(output_mode: str = "int") -> keras.Layer:
    return L.IntegerLookup(vocabulary=[1, 2, 3, 4], output_mode=output_mode)


def _int_pair(high: int, *shape: int) -> Callable[[np.random.Generator], Any]:
    return lambda rng: ([rng.integers(0, high, size=shape).astype("int32") for _ in range(2)],)


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
        # Shallower than its kernel, padded: what a video or volume model meets,
        # and what oneDNN's bfloat16 kernel-gradient defect needs (docs/keras_fixes.md).
        ZooEntry("Conv3D", lambda: L.Conv3D(4, 3, padding="same"), _normal(2, 2, 4, 4, 2)),
        ZooEntry("Conv2DTranspose", lambda: L.Conv2DTranspose(4, 3), _normal(2, 5, 5, 3)),
        ZooEntry("DepthwiseConv2D", lambda: L.DepthwiseConv2D(3), _normal(2, 6, 6, 3)),
        ZooEntry("SeparableConv2D", lambda: L.SeparableConv2D(4, 3), _normal(2, 6, 6, 3)),
        ZooEntry("SimpleRNN", lambda: L.SimpleRNN(4), _normal(2, 5, 3)),
        ZooEntry("LSTM", lambda: L.LSTM(4), _normal(2, 5, 3)),
        ZooEntry("GRU", lambda: L.GRU(4), _normal(2, 5, 3)),
        ZooEntry(
            "Bidirectional(SimpleRNN)", lambda: L.Bidirectional(L.SimpleRNN(4)), _normal(2, 5, 3)
        ),
        ZooEntry("Bidirectional(LSTM)", lambda: L.Bidirectional(L.LSTM(4)), _normal(2, 5, 3)),
        ZooEntry("Bidirectional(GRU)", lambda: L.Bidirectional(L.GRU(4)), _normal(2, 5, 3)),
        ZooEntry("ConvLSTM1D", lambda: L.ConvLSTM1D(2, 3), _normal(2, 3, 6, 2)),
        ZooEntry("ConvLSTM2D", lambda: L.ConvLSTM2D(2, 3), _normal(2, 3, 5, 5, 2)),
        ZooEntry("ConvLSTM3D", lambda: L.ConvLSTM3D(2, 3), _normal(2, 2, 4, 4, 4, 1)),
        ZooEntry("MatmulLayer", _matmul_layer, _normal(2, 8)),
        ZooEntry(
            "Float32Head", lambda: _matmul_layer(head=True), _normal(2, 8), output_dtype="float32"
        ),
        ZooEntry("TorchModuleWrapper", _torch_module, _normal(2, 8), backends=("torch",)),
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
        ZooEntry("RMSNormalization", lambda: L.RMSNormalization(), _normal(2, 8), since="3.9"),
        ZooEntry("Embedding", lambda: L.Embedding(20, 4), _ints(20, 2, 5)),
        ZooEntry(
            "CategoryEncoding",
            lambda: L.CategoryEncoding(num_tokens=6, output_mode="multi_hot"),
            _ints(6, 2, 3),
        ),
        ZooEntry(
            "Hashing", lambda: L.Hashing(num_bins=5), _ints(20, 2, 3), requires=("tensorflow",)
        ),
        ZooEntry("IntegerLookup", _integer_lookup, _ints(6, 2, 3), requires=("tensorflow",)),
        ZooEntry(
            "IntegerLookup(multi_hot)",
            lambda: _integer_lookup("multi_hot"),
            _ints(6, 2, 3),
            requires=("tensorflow",),
            # Keras declares its encodings in `floatx()` whatever the policy.
            output_dtype="float32",
        ),
        ZooEntry(
            "HashedCrossing(one_hot)",
            lambda: L.HashedCrossing(num_bins=5, output_mode="one_hot"),
            _int_pair(20, 4),
            requires=("tensorflow",),
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
