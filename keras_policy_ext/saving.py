"""`.keras` files that carry the rules a model was built under.

`save_model` writes the model with `model.save`, plus the rules (as
`keras_policy_ext.json` inside the zip, which Keras's own loader ignores);
`load_model` reloads it with those rules re-applied to the layers they
placed (the others, such as the float32 outputs of `with_float32_outputs`,
keep their stored policies), or retargets it to the policy or rules it is
given.

Loading never imports a module because a file names it: a rule's layer
class is looked up among Keras's layers, registered classes and
`custom_objects` (`keras_policy_ext.rules`); only `safe_mode=False`, for a
file the user trusts, imports what it names. A corrupt side file is a
`ValueError` naming the file and the entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import keras

from keras_policy_ext import plugin
from keras_policy_ext.models import sublayers
from keras_policy_ext.retargeting import as_target, config_layer_names, retarget
from keras_policy_ext.rules import Rule, Rules, owner_of, resolving_classes

RULES_FILE = "keras_policy_ext.json"
# The key of the note `save_model` adds to config.json when a layer has a
# policy Keras cannot rebuild from its name: Keras's own loader shows it in
# its error (it prints the config it failed on) and otherwise ignores it.
NOTE_KEY = "keras_policy_ext"
# How much of an archive entry `save_model`'s rewrite holds in memory at once.
_CHUNK_BYTES = 2**20


def rules_of(model: keras.layers.Layer) -> Rules | None:
    """The rules that placed the model or any of its layers, if any.

    Args:
        model: a `keras.Model` or layer.

    Returns:
        The `kpe.Rules` whose policy objects the model's layers hold, or
        `None` for a model built without rules.

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
    """Saves a model as `model.save(filepath)` does, with the rules it was built under.

    The rules are stored in the `.keras` zip as `keras_policy_ext.json`,
    which Keras's own loader ignores. When a layer's policy has a name Keras
    cannot parse (a role name such as `"params=bfloat16,compute=float32"`),
    the file also carries a note that Keras's own loader shows when it fails
    on it: load such a file with `keras_policy_ext.load_model`. kpe's
    entries are added by streaming the archive Keras wrote, never reading
    the weights whole.

    Args:
        model: the `keras.Model` to save.
        filepath: where to save it; a `.keras` path to store rules.
        rules: the `kpe.Rules` to store; `None` stores `rules_of(model)`.

    Raises:
        TypeError: `model` is not a `keras.Model`, or `rules` not `kpe.Rules`.
        ValueError: rules to store in a file that is not `.keras`.

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
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Invalid model={model!r} (of type {type(model).__name__}): expected a keras.Model."
        )
    if rules is not None and not isinstance(rules, Rules):
        raise TypeError(
            f"Invalid rules={rules!r} (of type {type(rules).__name__}): expected "
            "keras_policy_ext.Rules or None."
        )
    built_under = rules_of(model)
    rules = rules if rules is not None else built_under
    keras_file = os.fspath(filepath).endswith(".keras")
    if rules is not None and not keras_file:
        raise ValueError(
            f"Cannot store rules in {os.fspath(filepath)!r}: only a .keras file carries "
            "them; save to a path ending in .keras."
        )
    model.save(filepath)
    entries = {}
    if rules is not None:
        # In a model built under rules, the layers they did not place keep
        # their own policies on reload.
        unplaced = {l.name for l in sublayers(model) if owner_of(l.dtype_policy) is None}
        keep = (
            [] if built_under is None else sorted(unplaced & config_layer_names(model.get_config()))
        )
        entries[RULES_FILE] = json.dumps({"rules": rules.get_config(), "keep": keep})
    unnamed = _names_keras_cannot_parse(model)
    if unnamed and keras_file:
        _rewrite(filepath, entries, note=_note(unnamed))
    elif entries:
        with zipfile.ZipFile(filepath, "a") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)


def load_model(
    filepath: str | os.PathLike,
    policy: keras.DTypePolicy | str | Rules | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Loads a model file, placing its layers by `policy` or by its stored rules.

    Keras loads the model with the plugin installed (`kpe.installed()`), so
    every policy name kpe writes, role names included, comes back as a kpe
    policy. Then `policy` retargets the model to it (`kpe.retarget`); without
    `policy`, the rules `save_model` stored, if any, are re-applied to the
    layers they placed (files written before kpe stored the other layers'
    names get the rules on every layer); a file without rules comes back as
    Keras loads it.

    A file saved compiled comes back compiled in every case: the retargeted
    model gets the saved optimizer (its state too: step count, moments, loss
    scale, cast to the new variable dtypes), loss and metrics, so training
    continues where it stopped. A policy that now computes in float16 wraps
    the optimizer in `kpe.LossScaleOptimizer` and keeps the inner one's
    state; where the state cannot be matched, a `RuntimeWarning` says so.

    Args:
        filepath: a `.keras` file, or any other file Keras loads (`.h5`).
        policy: `None`, a policy (or its name) or `kpe.Rules` with a
            default: the policy the loaded model's float layers take.
        **kwargs: passed to `keras.saving.load_model` (`custom_objects`,
            `compile`, `safe_mode`); `custom_objects` and `safe_mode` also
            govern the stored rules' layer classes.

    Returns:
        The loaded `keras.Model`, compiled if the file was saved compiled
        (and `compile=False` was not given).

    Raises:
        ValueError: the file's stored rules are corrupt, or `policy` cannot
            hold the model (see `kpe.retarget`); what Keras raises for a file
            it cannot load.
        TypeError: `policy` is not a policy, a policy name or `kpe.Rules`.

    >>> import os, tempfile, keras, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("mixed_float16"):
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     model.save(os.path.join(tmp, "m.keras"))
    ...     served = kpe.load_model(os.path.join(tmp, "m.keras"), "mixed_bfloat16")
    >>> served.layers[0].dtype_policy
    <DTypePolicy "mixed_bfloat16">
    """
    target = None if policy is None else as_target(policy)
    stored = None
    if target is None:
        stored = _stored(filepath, kwargs.get("custom_objects"), kwargs.get("safe_mode", True))
    with plugin.installed():
        model = keras.saving.load_model(filepath, **kwargs)
    if target is not None:
        return _compiled_like(model, retarget(model, target), filepath)
    if stored is None:
        return model
    rules, keep = stored
    missing = sorted(set(keep) - config_layer_names(model.get_config()))
    if missing:
        raise _invalid(filepath, "keep", f"no layer named {missing} in the model")
    return _compiled_like(model, retarget(model, rules, keep=keep), filepath)


def _compiled_like(loaded: keras.Model, new: keras.Model, filepath: Any) -> keras.Model:
    """`new` compiled as `loaded` is, with `loaded`'s optimizer state carried over.

    The optimizer, loss, metrics and the other `compile` arguments come from
    `loaded.get_compile_config()`; each optimizer variable (step count,
    moments, loss scale) takes the loaded value, cast to the new dtype. When
    the retargeted model's optimizer holds other variables (a policy that
    now needs loss scaling wraps the optimizer), the inner optimizers'
    states are matched; when even those differ, a `RuntimeWarning` says that
    the optimizer starts afresh and what to do.
    """
    if not getattr(loaded, "compiled", False) or getattr(loaded, "optimizer", None) is None:
        return new
    with plugin.installed():  # policies change: loss scaling is chosen by the new dtypes
        new.compile_from_config(loaded.get_compile_config())
    if getattr(new, "optimizer", None) is None:
        return new  # a model with its own compile(): Keras's warning says to compile it
    old_optimizer, new_optimizer = loaded.optimizer, new.optimizer
    if not old_optimizer.built:
        return new  # saved before any step: nothing to carry
    if not new_optimizer.built:
        new_optimizer.build(new.trainable_variables)
    scaled = keras.optimizers.LossScaleOptimizer
    if isinstance(old_optimizer, scaled) != isinstance(new_optimizer, scaled):
        old_optimizer, new_optimizer = _inner(old_optimizer), _inner(new_optimizer)
    pairs = list(zip(old_optimizer.variables, new_optimizer.variables))
    if len(old_optimizer.variables) != len(new_optimizer.variables) or any(
        tuple(old.shape) != tuple(fresh.shape) for old, fresh in pairs
    ):
        warnings.warn(
            f"kpe.load_model({os.fspath(filepath)!r}): the model is compiled as it was "
            f"saved, but its optimizer's state ({len(old_optimizer.variables)} variables) "
            f"does not fit the retargeted model's optimizer "
            f"({len(new_optimizer.variables)} variables), so training restarts the "
            "optimizer's state (step count, moments). To keep it, load without "
            "policy= (keras.saving.load_model) and train under the saved policies.",
            RuntimeWarning,
            stacklevel=3,
        )
        return new
    for old, fresh in pairs:
        fresh.assign(keras.ops.cast(old.value, fresh.dtype))
    return new


def _inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer a `LossScaleOptimizer` wraps, else `optimizer`."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def stored_rules(
    filepath: str | os.PathLike,
    *,
    custom_objects: Mapping[str, Any] | None = None,
    safe_mode: bool = True,
) -> Rules | None:
    """The rules `save_model` stored in a model file, or `None`.

    Args:
        filepath: a model file.
        custom_objects: classes the rules may name, as in `load_model`.
        safe_mode: as in `load_model`: `False` (a trusted file) lets a
            rule's `"module:Qualname"` class be imported.

    Returns:
        The stored `kpe.Rules`, or `None` for a file without them.

    Raises:
        ValueError: the stored rules are corrupt (the error names the entry).

    >>> import os, tempfile, keras, keras_policy_ext as kpe
    >>> rules = kpe.rules.FLOAT32_NUMERICS.with_default("mixed_bfloat16")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.LayerNormalization()])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     kpe.save_model(model, os.path.join(tmp, "m.keras"), rules=rules)
    ...     kpe.saving.stored_rules(os.path.join(tmp, "m.keras")) == rules
    True
    """
    stored = _stored(filepath, custom_objects, safe_mode)
    return None if stored is None else stored[0]


def _invalid(filepath: str | os.PathLike, entry: str, why: str) -> ValueError:
    return ValueError(
        f"Invalid {RULES_FILE} in {os.fspath(filepath)!r}: entry {entry!r}: {why}. "
        "The file is corrupt or was not written by keras_policy_ext.save_model; "
        "load it with keras.saving.load_model to ignore its rules."
    )


def _stored(
    filepath: str | os.PathLike, custom_objects: Any, safe_mode: Any
) -> tuple[Rules, list[str]] | None:
    """The stored rules and kept layer names, or `None` for a file without them."""
    if not (os.path.isfile(filepath) and zipfile.is_zipfile(filepath)):
        return None  # Keras says what it makes of the path
    with zipfile.ZipFile(filepath) as archive:
        if RULES_FILE not in archive.namelist():
            return None
        raw = archive.read(RULES_FILE)
    try:
        stored = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(filepath, RULES_FILE, f"not valid JSON ({e})") from None
    if not isinstance(stored, dict):
        raise _invalid(filepath, RULES_FILE, f"expected a JSON object, got {stored!r}")
    config = _entry(filepath, stored, "rules", dict, "rules")
    rule_configs = _entry(filepath, config, "rules", list, "rules.rules")
    rules = []
    with resolving_classes(custom_objects, safe_mode):
        for i, rule_config in enumerate(rule_configs):
            entry = f"rules.rules[{i}]"
            if not isinstance(rule_config, dict) or not isinstance(rule_config.get("policy"), str):
                raise _invalid(
                    filepath, entry, f"expected an object with a 'policy' name, got {rule_config!r}"
                )
            try:
                rules.append(Rule.from_config(rule_config))
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise _invalid(filepath, entry, f"{rule_config!r}: {e}") from None
    default = config.get("default")
    try:
        Rules([], default)
    except (TypeError, ValueError) as e:
        raise _invalid(filepath, "rules.default", f"{default!r}: {e}") from None
    try:
        found = Rules(rules, default)
    except (TypeError, ValueError) as e:
        raise _invalid(filepath, "rules.rules", str(e)) from None
    keep = stored.get("keep", [])
    if not isinstance(keep, list) or not all(isinstance(name, str) for name in keep):
        raise _invalid(filepath, "keep", f"expected a list of layer names, got {keep!r}")
    return found, keep


def _entry(filepath: str | os.PathLike, config: dict, key: str, kind: type, entry: str) -> Any:
    if key not in config:
        raise _invalid(filepath, entry, "missing")
    value = config[key]
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a list"
        raise _invalid(filepath, entry, f"expected {expected}, got {value!r}")
    return value


def _names_keras_cannot_parse(model: keras.Model) -> list[str]:
    """The names of the model's float policies that Keras's own `DTypePolicy` rejects."""
    names = set()
    for layer in [model, *sublayers(model)]:
        policy = layer.dtype_policy
        if policy.quantization_mode is not None or isinstance(
            policy, keras.dtype_policies.DTypePolicyMap
        ):
            continue
        try:
            keras.DTypePolicy(policy.name)
        except (TypeError, ValueError):
            names.add(policy.name)
    return sorted(names)


def _note(names: list[str]) -> str:
    return (
        f"This model has dtype policies Keras cannot rebuild layers from ({names}): load "
        "it with keras_policy_ext.load_model(path), or with keras.saving.load_model "
        "inside `with keras_policy_ext.installed():`."
    )


def _rewrite(filepath: str | os.PathLike, entries: dict[str, str], note: str) -> None:
    """Rewrites the `.keras` zip with `entries` added and `note` in its config.json.

    Each entry is streamed from the old archive to the new one in chunks, so
    the weights are never held in memory whole; the new archive replaces the
    old one only once it is complete.
    """
    directory = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory)
    os.close(fd)
    try:
        with zipfile.ZipFile(filepath) as source, zipfile.ZipFile(tmp, "w") as archive:
            for info in source.infolist():
                if info.filename == "config.json":
                    # First, so that Keras's error shows it before the rest.
                    config = json.loads(source.read(info))
                    archive.writestr(info, json.dumps({NOTE_KEY: note, **config}).encode())
                    continue
                large = info.file_size >= zipfile.ZIP64_LIMIT
                with source.open(info) as read, archive.open(info, "w", force_zip64=large) as write:
                    shutil.copyfileobj(read, write, _CHUNK_BYTES)
            for name, text in entries.items():
                archive.writestr(name, text)
        os.replace(tmp, filepath)
    except BaseException:
        os.remove(tmp)
        raise
