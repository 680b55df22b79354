"""`get`, `serialize` and `deserialize`, mirroring `keras.dtype_policies`.

>>> import keras_policy_ext as kpe
>>> config = kpe.dtype_policies.serialize(kpe.DTypePolicy("mixed_float16"))
>>> kpe.dtype_policies.deserialize(config)
<DTypePolicy "mixed_float16">
"""

from __future__ import annotations

from typing import Any

import keras

from keras_policy_ext import config
from keras_policy_ext.policy import DTypePolicy, FloatDTypePolicy, from_name

__all__ = ["DTypePolicy", "FloatDTypePolicy", "deserialize", "get", "serialize"]

# Keras's serialized form of its own float policies, which kpe reads as kpe's.
_KERAS_FLOAT_CLASSES = ("DTypePolicy", "FloatDTypePolicy")


def get(identifier: Any = None) -> keras.DTypePolicy:
    """Returns a policy for a layer's `dtype=` argument.

    Args:
        identifier: `None` for the policy in force
            (`keras_policy_ext.config.dtype_policy()`); a name, for a kpe
            policy (or Keras's quantized policy for a quantized name such as
            `"int8_from_float32"`); a `keras.DTypePolicy`, returned as it is;
            a dict, deserialized; a dtype object, for that dtype's policy.

    Returns:
        A `keras.DTypePolicy`.

    Raises:
        ValueError: an unknown name, or a value that is none of the above.

    >>> import keras_policy_ext as kpe
    >>> kpe.dtype_policies.get("mixed_bfloat16")
    <DTypePolicy "mixed_bfloat16">
    >>> type(kpe.dtype_policies.get("int8_from_float32")).__name__
    'QuantizedDTypePolicy'
    """
    if identifier is None:
        return config.dtype_policy()
    if isinstance(identifier, keras.DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return from_name(identifier)
    try:
        return DTypePolicy(keras.backend.standardize_dtype(identifier))
    except (TypeError, ValueError):
        raise ValueError(
            "Cannot interpret `dtype` argument. Expected a string "
            "or an instance of DTypePolicy. Received: "
            f"dtype={identifier!r}"
        ) from None


def serialize(policy: keras.DTypePolicy) -> dict:
    """Returns the Keras serialization dict of a policy.

    Args:
        policy: a `keras.DTypePolicy` (kpe's or Keras's).

    Returns:
        A dict, as `keras.saving.serialize_keras_object` writes it.

    >>> import keras_policy_ext as kpe
    >>> config = kpe.dtype_policies.serialize(kpe.DTypePolicy("float16"))
    >>> config["registered_name"], config["config"]
    ('keras_policy_ext>DTypePolicy', {'name': 'float16'})
    """
    return keras.saving.serialize_keras_object(policy)


def deserialize(config: dict, custom_objects: dict | None = None) -> keras.DTypePolicy:
    """Rebuilds a policy from `serialize`'s output.

    Keras's own float policies come back as kpe policies; quantized ones and
    `DTypePolicyMap`s stay Keras's.

    Args:
        config: a dict from `serialize` (or from
            `keras.dtype_policies.serialize`).
        custom_objects: classes to resolve by name, as Keras takes them.

    Returns:
        A `keras.DTypePolicy`.

    Raises:
        TypeError: what Keras raises for a class it cannot locate.

    >>> import keras, keras_policy_ext as kpe
    >>> config = keras.dtype_policies.serialize(keras.DTypePolicy("float16"))
    >>> kpe.dtype_policies.deserialize(config)
    <DTypePolicy "float16">
    """
    if (
        config.get("class_name") in _KERAS_FLOAT_CLASSES
        and config.get("module") == "keras"
        and not config.get("registered_name")
    ):
        return DTypePolicy.from_config(config["config"])
    return keras.saving.deserialize_keras_object(
        config,
        module_objects=vars(keras.dtype_policies),
        custom_objects=custom_objects,
    )
