"""`.keras` files that carry the rules a model was built under.

`save_model` writes the model with `model.save`, plus the rules (as
`keras_policy_ext.json` inside the zip, which Keras's own loader ignores);
`load_model` reloads it with those rules re-applied to the layers they
placed (the others, such as the float32 outputs of `with_float32_outputs`,
keep their stored policies), or retargets it to the policy or rules it is
given.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import keras

from keras_policy_ext.models import sublayers
from keras_policy_ext.retargeting import _config_names, retarget
from keras_policy_ext.rules import Rules, owner_of

RULES_FILE = "keras_policy_ext.json"


def rules_of(model: keras.layers.Layer) -> Rules | None:
    """The rules that placed the model or any of its layers, if any.

    >>> import keras, keras_policy_ext as kpe
    >>> rules = kpe.rules.FLOAT32_NUMERICS
    >>> with kpe.installed(), kpe.config.policy_scope("mixed_float16", rules=rules):
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.LayerNormalization()])
    >>> kpe.saving.rules_of(model).rules == rules.rules
    True
    """
    for layer in [model, *sublayers(model)]:
        found = owner_of(layer.dtype_policy)
        if found is not None:
            return found
    return None


def save_model(model: keras.Model, filepath: str | os.PathLike, rules: Rules | None = None) -> None:
    """`model.save(filepath)`, with `rules` (default: `rules_of(model)`) stored in the file.

    >>> import os, tempfile, keras, keras_policy_ext as kpe
    >>> rules = kpe.rules.FLOAT32_NUMERICS
    >>> with kpe.installed(), kpe.config.policy_scope("mixed_float16", rules=rules):
    ...     inputs = keras.Input((6, 8))
    ...     outputs = keras.layers.MultiHeadAttention(2, 4)(inputs, inputs)
    ...     model = keras.Model(inputs, outputs)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     kpe.saving.save_model(model, os.path.join(tmp, "m.keras"))
    ...     loaded = kpe.load_model(os.path.join(tmp, "m.keras"))
    >>> inner = kpe.models.sublayers(loaded)
    >>> softmax = next(l for l in inner if isinstance(l, keras.layers.Softmax))
    >>> softmax.dtype_policy  # inside the attention layer: placed by the stored rules
    <DTypePolicy "float32">
    """
    model.save(filepath)
    built_under = rules_of(model)
    rules = rules if rules is not None else built_under
    if rules is not None:
        # In a model built under rules, the layers they did not place keep
        # their own policies on reload.
        unplaced = {l.name for l in sublayers(model) if owner_of(l.dtype_policy) is None}
        keep = [] if built_under is None else sorted(unplaced & _config_names(model.get_config()))
        with zipfile.ZipFile(filepath, "a") as archive:
            archive.writestr(RULES_FILE, json.dumps({"rules": rules.get_config(), "keep": keep}))


def load_model(
    filepath: str | os.PathLike,
    policy: keras.DTypePolicy | str | Rules | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Loads a `.keras` file, placing its layers by `policy` or by its stored rules.

    `policy` (a policy or `Rules`) retargets the loaded model to it; `None`
    re-applies the rules `save_model` stored, if any, to the layers they
    placed (else the model is returned as Keras loads it; files written
    before kpe stored the other layers' names get the rules on every
    layer). `kwargs` go to `keras.saving.load_model`.

    >>> import os, tempfile, keras, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("mixed_float16"):
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     model.save(os.path.join(tmp, "m.keras"))
    ...     served = kpe.load_model(os.path.join(tmp, "m.keras"), "mixed_bfloat16")
    >>> served.layers[0].dtype_policy
    <DTypePolicy "mixed_bfloat16">
    """
    model = keras.saving.load_model(filepath, **kwargs)
    if policy is not None:
        return retarget(model, policy)
    stored = _stored(filepath)
    if stored is None:
        return model
    return retarget(model, Rules.from_config(stored["rules"]), keep=stored.get("keep", ()))


def stored_rules(filepath: str | os.PathLike) -> Rules | None:
    """The rules `save_model` stored in a `.keras` file, or `None`."""
    stored = _stored(filepath)
    return None if stored is None else Rules.from_config(stored["rules"])


def _stored(filepath: str | os.PathLike) -> dict | None:
    with zipfile.ZipFile(filepath) as archive:
        if RULES_FILE not in archive.namelist():
            return None
        return json.loads(archive.read(RULES_FILE))
