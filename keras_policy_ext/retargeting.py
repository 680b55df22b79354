"""Retargeting: the same model, rebuilt under another policy, weights carried over."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import keras
from keras import ops

from keras_policy_ext import config, dtype_policies, plugin
from keras_policy_ext.policy import as_policy
from keras_policy_ext.rules import Rules


def _replace_policies(
    node: Any, policy: keras.DTypePolicy | None, keep: Collection[str] = ()
) -> Any:
    """A copy of a model config with every float layer policy set to `policy`.

    `None` lets the scope (and its rules) decide. Layers named in `keep`,
    `InputLayer`s and operations keep their dtype (an `InputLayer`'s and an
    operation's are tensor dtypes, not policies); quantized policies and
    `DTypePolicyMap`s are left as they are.
    """
    if isinstance(node, list):
        return [_replace_policies(item, policy, keep) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "InputLayer":
        return node
    if str(node.get("module", "")).startswith("keras.src.ops"):
        # An operation of a functional model (`ops.cast` is `Cast`): its `dtype`
        # is a tensor dtype. Keras 3.8 writes its config without a name.
        return node
    out = {k: _replace_policies(v, policy, keep) for k, v in node.items()}
    if "dtype" in node and node.get("name") not in keep and _is_float_policy(node["dtype"]):
        out["dtype"] = None if policy is None else dtype_policies.serialize(policy)
    return out


def config_layer_names(node: Any) -> set[str]:
    """The names of the layers with a policy in a model config (`InputLayer`s aside)."""
    if isinstance(node, list):
        return set().union(*map(config_layer_names, node))
    if not isinstance(node, dict) or node.get("class_name") == "InputLayer":
        return set()
    own = {node["name"]} if "dtype" in node and isinstance(node.get("name"), str) else set()
    return own.union(*map(config_layer_names, node.values()))


def _is_float_policy(value: Any) -> bool:
    if not isinstance(value, (str, dict)):
        return False
    try:
        found = dtype_policies.get(value)
    except (TypeError, ValueError):
        return False
    return (
        found.quantization_mode is None
        and not isinstance(found, keras.dtype_policies.DTypePolicyMap)
        and keras.backend.is_float_dtype(found.compute_dtype)
    )


def retarget(
    model: keras.Model,
    policy: keras.DTypePolicy | str | Rules,
    *,
    keep: Collection[str] = (),
) -> keras.Model:
    """A new model of the same architecture whose layers follow `policy`.

    `policy` is a policy, or `keras_policy_ext.Rules` (each layer then gets
    the policy its rule picks; the rules need a default). The layers named
    in `keep` (e.g. the float32 outputs of `with_float32_outputs`) keep
    their policies; names match the layers of the model's config, nested
    models' included. Works for Sequential, functional and registered
    subclassed models (those that round-trip through `get_config` /
    `from_config`). The weights are carried over, cast to the new variable
    dtypes; `model` is untouched. The new model is not compiled
    (`kpe.load_model` compiles it as the file was saved).

    Args:
        model: the `keras.Model` to rebuild.
        policy: a policy (or its name), or `kpe.Rules` with a default.
        keep: names of layers that keep their policies.

    Returns:
        A new, built `keras.Model` with `model`'s weights, cast.

    Raises:
        ValueError: a policy whose variable dtype cannot hold float weights
            (`"int32"`), a cast that would turn a finite weight into inf or
            nan (float32 weights above 65504 into float16), a quantized
            policy or a `DTypePolicyMap`, rules without a default, a `keep`
            name the model lacks, or a model that cannot be rebuilt from its
            config.
        TypeError: an argument of the wrong type.

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("mixed_float16"):
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> exported = kpe.retarget(model, "float32")
    >>> exported.layers[0].dtype_policy, model.layers[0].dtype_policy
    (<DTypePolicy "float32">, <DTypePolicy "mixed_float16">)
    >>> x = np.ones((1, 4), "float32")
    >>> as_numpy = lambda y: keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    >>> np.allclose(as_numpy(exported(x)), as_numpy(model(x)), atol=1e-2)
    True
    >>> wrapped = kpe.with_float32_outputs(model)
    >>> served = kpe.retarget(wrapped, "bfloat16", keep=[wrapped.layers[-1].name])
    >>> [layer.dtype_policy.name for layer in served.layers[1:]]
    ['bfloat16', 'float32']
    >>> kpe.retarget(model, "int32")
    Traceback (most recent call last):
    ...
    ValueError: Cannot retarget 'sequential...' to 'int32': its variable dtype int32 cannot hold ...
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Invalid model={model!r} (of type {type(model).__name__}): expected a "
            "keras.Model (Sequential, functional or subclassed) to retarget."
        )
    if isinstance(keep, str) or not isinstance(keep, Iterable):
        raise TypeError(f"Invalid keep={keep!r}: expected a collection of layer names, not a str.")
    keep = list(keep)
    if not all(isinstance(name, str) for name in keep):
        raise TypeError(f"Invalid keep={keep!r}: expected a collection of layer names (str).")
    target = as_target(policy)
    _check_holds(model, target)
    names = config_layer_names(model.get_config()) if keep else set()
    if set(keep) - names:
        raise ValueError(
            f"Invalid keep: no layer named {sorted(set(keep) - names)} in {model.name!r}; "
            f"its layers: {sorted(names)}."
        )
    placed = None if isinstance(target, Rules) else target
    # The plugin parses every policy name kpe writes, role names included
    # (Keras's `Operation.from_config` rebuilds stock layers from the name).
    with plugin.installed(), config.policy_scope(placed, rules=_rules_of(target)):
        try:
            model_config = _replace_policies(model.get_config(), placed, keep)
            new = type(model).from_config(model_config)
        except Exception as e:
            raise ValueError(
                f"Cannot retarget {model.name!r}: {type(model).__name__} cannot be "
                f"rebuilt from its get_config() ({type(e).__name__}: {e}); a "
                "subclassed model needs get_config() with its constructor "
                "arguments."
            ) from e
        build_config = model.get_build_config()
        if not new.built and build_config:
            new.build_from_config(build_config)
    old_weights, new_weights = model.weights, new.weights
    if [tuple(w.shape) for w in old_weights] != [tuple(w.shape) for w in new_weights]:
        raise ValueError(
            f"Cannot retarget {model.name!r}: its rebuilt copy has other weights "
            f"({len(new_weights)} against {len(old_weights)}, or other shapes); "
            "a subclassed model must rebuild itself from get_config()."
        )
    for old, fresh in zip(old_weights, new_weights):
        value = ops.cast(old.value, fresh.dtype)
        if _overflows(old, value):
            raise ValueError(
                f"Cannot retarget {model.name!r}: weight {old.path!r} has finite values "
                f"that {keras.backend.standardize_dtype(fresh.dtype)} cannot hold (they "
                "would become inf or nan); keep its layer in a wider policy (keep=[...] "
                "or a rule)."
            )
        fresh.assign(value)
    return new


def as_target(policy: Any) -> keras.DTypePolicy | Rules:
    """`policy` checked as a retarget target: a float policy, or rules with a default."""
    if isinstance(policy, Rules):
        if policy.default is None:
            raise ValueError("Cannot retarget to rules without a default: give Rules(default=...).")
        return policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        raise ValueError(
            f"Cannot retarget to a DTypePolicyMap ({policy!r}): give "
            "keras_policy_ext.Rules.from_dtype_policy_map(policy) instead."
        )
    if not isinstance(policy, (str, keras.DTypePolicy)):
        raise TypeError(
            f"Invalid policy={policy!r} (of type {type(policy).__name__}): expected a "
            "policy name such as 'mixed_bfloat16', a keras.DTypePolicy, or "
            "keras_policy_ext.Rules."
        )
    placed = as_policy(policy)
    if placed.quantization_mode is not None:
        raise ValueError(
            f"Cannot retarget to the quantized policy {placed.name!r}: quantize the "
            f"model with model.quantize({placed.quantization_mode!r}) instead."
        )
    return placed


def _rules_of(target: keras.DTypePolicy | Rules) -> Rules | None:
    return target if isinstance(target, Rules) else None


def _check_holds(model: keras.Model, target: keras.DTypePolicy | Rules) -> None:
    """A `ValueError` if a policy `target` places cannot hold or run float layers."""
    if isinstance(target, Rules):
        policies = [rule.policy for rule in target.rules] + [target.default]
    else:
        policies = [target]
    for policy in policies:
        variable, compute = policy.variable_dtype, policy.compute_dtype
        if not keras.backend.is_float_dtype(variable):
            why = f"its variable dtype {variable} cannot hold the model's float weights"
        elif not keras.backend.is_float_dtype(compute):
            why = f"its compute dtype {compute} cannot run float layers"
        else:
            continue
        raise ValueError(
            f"Cannot retarget {model.name!r} to {policy.name!r}: {why}; give a float "
            "policy such as 'float32', 'mixed_bfloat16' or 'mixed_float16'."
        )


def _overflows(old: Any, value: Any) -> bool:
    """Whether casting `old` (a variable) to `value` turned a finite value non-finite."""
    if not (keras.backend.is_float_dtype(old.dtype) and keras.backend.is_float_dtype(value.dtype)):
        return False
    lost = ops.logical_and(ops.isfinite(old.value), ops.logical_not(ops.isfinite(value)))
    return bool(ops.convert_to_numpy(ops.any(lost)))
