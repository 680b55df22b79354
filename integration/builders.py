"""Small real Keras models and their synthetic data, shared by the tests.

Every builder uses only stock layers and takes its policy from the global
(`dtype=None`), so the same code runs under any kpe policy or scope.
"""

import keras
import numpy as np

import keras_policy_ext as kpe


@keras.saving.register_keras_serializable(package="kpe_integration")
class ResidualBlock(keras.Model):
    """A subclassed model: Dense -> LayerNormalization with a residual."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        # Sublayers follow the block's policy, also when it is reloaded.
        policy = self.dtype_policy
        self.dense = keras.layers.Dense(units, activation="relu", dtype=policy)
        self.norm = keras.layers.LayerNormalization(dtype=policy)
        self.head = keras.layers.Dense(4, dtype=policy)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build(input_shape)
        self.head.build(input_shape)

    def call(self, x):
        return self.head(self.norm(x + self.dense(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def sequential_mlp():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(4),
        ]
    )


def functional_conv():
    x = inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def embedding_lstm():
    x = inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 8)(x)
    x = keras.layers.LSTM(8)(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def attention():
    x = inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def transformer_block():
    """A Transformer encoder block: attention and feed-forward, residuals, norms."""
    x = inputs = keras.Input((6, 8))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    hidden = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(8)(hidden))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def subclassed():
    model = ResidualBlock(8)
    model.build((None, 8))
    return model


BUILDERS = {
    "sequential_mlp": sequential_mlp,
    "functional_conv": functional_conv,
    "embedding_lstm": embedding_lstm,
    "attention": attention,
    "transformer_block": transformer_block,
    "subclassed": subclassed,
}
INPUT_SHAPES = {
    "sequential_mlp": (8,),
    "functional_conv": (8, 8, 3),
    "embedding_lstm": (5,),
    "attention": (6, 8),
    "transformer_block": (6, 8),
    "subclassed": (8,),
}


def data(name, n=16, seed=0):
    """Synthetic inputs and regression targets for the model `name`."""
    rng = np.random.default_rng(seed)
    shape = (n, *INPUT_SHAPES[name])
    if name == "embedding_lstm":
        x = rng.integers(0, 20, size=shape).astype("int32")
    else:
        x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=(n, 4)).astype("float32")
    return x, y


def all_layers(model):
    """Every layer below `model`, nested ones included (a Keras internal)."""
    return kpe.models.sublayers(model)


def placed_layers(model):
    """Every layer below `model` that has a policy to place: all but the
    `InputLayer`s, whose dtype is a tensor dtype (not serialized as a policy)."""
    return [l for l in all_layers(model) if not isinstance(l, keras.layers.InputLayer)]


def layer_policies(model):
    """The policies of `placed_layers(model)`."""
    return [layer.dtype_policy for layer in placed_layers(model)]


def as_numpy(y):
    """A tensor as a float64 numpy array, through float32."""
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")), np.float64)
