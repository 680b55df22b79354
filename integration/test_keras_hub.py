"""keras-hub backbones under mixed policies: kpe's policies (through the
plugin, with its fixes of Keras's defects applied) against Keras's own.

Each backbone is built twice from one tiny config with the same `dtype=`
policy name: once by plain Keras (the plugin not installed: Keras's
`DTypePolicy`), once inside `kpe.installed()` (kpe's `DTypePolicy`). The kpe
model takes the Keras model's weights, both run on the same inputs, and
everything must agree exactly: every layer's policy name, every variable's
dtype, every output's dtype and every output's values (bit for bit), eager
and symbolic. Opt-in: `tox -e hub` installs keras-hub (`--no-deps`: its
wheel requires tensorflow-text, which pulls full TensorFlow); elsewhere the
module skips.
"""

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from integration.builders import all_layers

keras_hub = pytest.importorskip(
    "keras_hub",
    reason="keras-hub is not installed (opt-in: `tox -e hub` installs it --no-deps)",
)

BACKEND = keras.backend.backend()
POLICIES = ["mixed_float16", "mixed_bfloat16"]
BATCH, SEQ, VOCAB = 2, 8, 64


# BERT's and GPT-2's tiny configs: the same arguments.
TEXT = dict(
    vocabulary_size=VOCAB,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=SEQ,
)


def bert(dtype):
    return keras_hub.models.BertBackbone(**TEXT, dtype=dtype)


def gpt2(dtype):
    return keras_hub.models.GPT2Backbone(**TEXT, dtype=dtype)


def gemma(dtype):
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        dtype=dtype,
    )


def resnet(dtype):
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],  # a basic block has no projection shortcut,
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],  # keras-hub requires 64 first
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(16, 16, 3),
        dtype=dtype,
    )


BACKBONES = {"bert": bert, "gpt2": gpt2, "gemma": gemma, "resnet": resnet}


def inputs(name):
    rng = np.random.default_rng(0)
    if name == "resnet":
        return rng.uniform(0, 1, size=(BATCH, 16, 16, 3)).astype("float32")
    x = {
        "token_ids": rng.integers(1, VOCAB, size=(BATCH, SEQ)).astype("int32"),
        "padding_mask": np.array([[1] * SEQ, [1] * (SEQ - 3) + [0] * 3], "int32"),
    }
    if name == "bert":
        x["segment_ids"] = np.array([[0] * 4 + [1] * 4] * BATCH, "int32")
    return x


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def outputs(model, x):
    """`model(x)`'s outputs, flattened, as NumPy arrays."""
    return [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(model(x))]


def symbolic_dtypes(model):
    return [keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(model.outputs)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_matches_keras_policy(name, policy):
    x = inputs(name)
    assert not kpe.is_installed()
    reference = BACKBONES[name](policy)  # Keras's own policy
    expected = outputs(reference, x)
    assert all(type(l.dtype_policy) is not kpe.DTypePolicy for l in all_layers(reference))

    with kpe.installed():
        model = BACKBONES[name](policy)
        model.set_weights(reference.get_weights())
        got = outputs(model, x)

    # Every layer: a kpe policy of the same name as Keras's.
    ours, theirs = all_layers(model), all_layers(reference)
    assert [type(l) for l in ours] == [type(l) for l in theirs]
    for mine, keras_layer in zip(ours, theirs):
        if isinstance(mine, keras.layers.InputLayer):
            continue
        assert type(mine.dtype_policy) is kpe.DTypePolicy, mine.path
        assert mine.dtype_policy.name == keras_layer.dtype_policy.name, mine.path
    # Every variable: the same dtype.
    assert len(model.weights) == len(reference.weights)
    for mine, keras_var in zip(model.weights, reference.weights):
        assert dtype_of(mine) == dtype_of(keras_var), mine.path
    # Every output: the same dtype and the same values, bit for bit.
    assert len(got) == len(expected)
    for i, (mine, keras_out) in enumerate(zip(got, expected)):
        assert mine.dtype == keras_out.dtype, i
        assert np.array_equal(mine, keras_out), (
            i,
            np.abs(mine.astype("float64") - keras_out).max(),
        )
    # The functional graph: the same symbolic output dtypes.
    assert symbolic_dtypes(model) == symbolic_dtypes(reference)
