"""Policy rules: an ordered list that picks a policy per layer, first match wins.

A `Rule` matches a layer by class (subclasses included), by name and by the
path the layer is built under (glob strings, or compiled `re` patterns,
matched in full); every criterion it has must hold. `Rules` holds the rules
and a default for the layers no rule matches. Rules act when layers are
constructed, through `keras_policy_ext.config.policy_scope(rules=...)` with
the plugin installed, so the picked policy is in force from a layer's first
call, eagerly and symbolically.

>>> import keras, keras_policy_ext as kpe
>>> rules = kpe.Rules(
...     [kpe.Rule("float32", layer=keras.layers.LayerNormalization)],
...     default="mixed_bfloat16")
>>> rules.pick(keras.layers.LayerNormalization, "layer_normalization")
<DTypePolicy "float32">
>>> rules.pick(keras.layers.Dense, "dense")
<DTypePolicy "mixed_bfloat16">
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fnmatch
import functools
import importlib
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import keras

from keras_policy_ext import internals
from keras_policy_ext.policy import QUANTIZED_MARK, DTypePolicy, from_name

# Each `Rules` makes its own policy objects and links each to it (attribute
# `_OWNER`), so the rules live as long as a layer uses one of them: a layer
# built with such an object (a composite layer handing its policy to its
# sublayers) is placed by those rules, as a layer built with `dtype=None` in
# their scope is.
_OWNER = "_kpe_rules"
# How each layer placed by rules got its policy, for `explain`.
_EXPLANATIONS: weakref.WeakKeyDictionary[Any, Explanation] = weakref.WeakKeyDictionary()


# The regex flags a pattern keeps through its config, by Python's inline flag
# letters (`(?aimsx)`).
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "a": re.ASCII}
_FLAG_LETTERS = ", ".join(sorted(_FLAGS))
# Flags that change nothing a str pattern matches: UNICODE is a str pattern's
# default, DEBUG only prints.
_NEUTRAL_FLAGS = re.UNICODE | re.DEBUG


class Pattern:
    """A name or path pattern: a glob string, or a compiled `re` pattern (flags kept)."""

    def __init__(self, pattern: str | re.Pattern | Pattern) -> None:
        if isinstance(pattern, Pattern):
            self.kind, self.text, self.flags = pattern.kind, pattern.text, pattern.flags
            self._regex = pattern._regex
        elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
            flags = pattern.flags & ~_NEUTRAL_FLAGS
            unsupported = re.RegexFlag(flags & ~sum(_FLAGS.values()))
            if unsupported:
                raise ValueError(
                    f"Invalid pattern {pattern!r}: unsupported flag {unsupported!r}; "
                    f"rules keep {', '.join(map(repr, _FLAGS.values()))}."
                )
            self.kind, self.text, self.flags, self._regex = "regex", pattern.pattern, flags, pattern
        elif isinstance(pattern, str) and pattern:
            self.kind, self.text, self.flags = "glob", pattern, 0
            self._regex = re.compile(fnmatch.translate(pattern))
        else:
            raise ValueError(
                f"Invalid pattern {pattern!r}: expected a non-empty glob string "
                "or a compiled str regular expression (re.compile(...))."
            )

    @classmethod
    def from_config(cls, config: dict) -> Pattern:
        """The pattern of `get_config()`'s output (`flags` optional, as in older files)."""
        keys = set(config) if isinstance(config, dict) else set()
        if len(keys & {"glob", "regex"}) != 1 or not keys <= {"glob", "regex", "flags"}:
            raise ValueError(
                f"Invalid pattern config {config!r}: expected {{'glob': text}} or "
                "{'regex': text} with optional 'flags' (letters such as 'i')."
            )
        kind = "glob" if "glob" in keys else "regex"
        text, letters = config[kind], config.get("flags", "")
        if not isinstance(text, str):
            raise ValueError(f"Invalid pattern config {config!r}: the {kind} must be a string.")
        if kind == "glob":
            if letters:
                raise ValueError(
                    f"Invalid pattern config {config!r}: flags apply to 'regex' patterns only."
                )
            return cls(text)
        if not isinstance(letters, str) or not set(letters) <= set(_FLAGS):
            bad = letters if not isinstance(letters, str) else sorted(set(letters) - set(_FLAGS))
            raise ValueError(
                f"Invalid regex flags {bad!r} in pattern config {config!r}: expected a "
                f"string of the letters {_FLAG_LETTERS}."
            )
        try:
            return cls(re.compile(text, sum(_FLAGS[letter] for letter in set(letters))))
        except re.error as e:
            raise ValueError(f"Invalid regex pattern {text!r}: {e}") from None

    def get_config(self) -> dict:
        """`{"glob": text}`, or `{"regex": text}` plus the flags the text does not set itself."""
        letters = self._added_flags()
        return {self.kind: self.text, **({"flags": letters} if letters else {})}

    def _added_flags(self) -> str:
        """The letters of the flags the text does not set itself (as `(?i)` would)."""
        if self.kind == "glob":
            return ""
        try:
            own = re.compile(self.text).flags
        except re.error:  # valid only with its flags (a verbose pattern's comment)
            own = 0
        added = self.flags & ~own
        return "".join(letter for letter, flag in sorted(_FLAGS.items()) if added & flag)

    def matches(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None

    def keras_regex(self) -> str:
        """The pattern as one regex string, flags inline, for Keras's `DTypePolicyMap`."""
        if self.kind == "glob":
            return self._regex.pattern
        letters = self._added_flags()
        return f"(?{letters}){self.text}" if letters else self.text

    def covers(self, other: Pattern) -> bool:
        """Whether this pattern matches every string `other` matches (as far as known)."""
        # A regex also matches case-insensitively what it matches as written.
        return self == other or (
            self.kind == other.kind == "regex"
            and self.text == other.text
            and self.flags == other.flags | re.IGNORECASE
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, int]:
        return self.kind, self.text, self.flags

    def __repr__(self) -> str:
        if self.kind == "glob":
            return repr(self.text)
        flags = "|".join(f"re.{flag.name}" for flag in sorted(_FLAGS.values()) if self.flags & flag)
        return f"re.compile({self.text!r}{', ' + flags if flags else ''})"


# Keras's quantized policy classes, by name: the only classes a policy config
# in rules may name (nothing is imported). Those this Keras has: Int4DTypePolicy
# came with Keras 3.15, GPTQ and AWQ with later 3.x releases than 3.8.
_QUANTIZED_CLASSES = {
    name: getattr(keras.dtype_policies, name)
    for name in (
        "QuantizedDTypePolicy",
        "QuantizedFloat8DTypePolicy",
        "Int4DTypePolicy",
        "GPTQDTypePolicy",
        "AWQDTypePolicy",
    )
    if hasattr(keras.dtype_policies, name)
}


def _fresh(policy: Any) -> keras.DTypePolicy:
    """A new policy object equal to `policy`: kpe's for a float policy, Keras's for a
    quantized one. `policy` is a name, a policy, or a quantized policy's config
    (`{"class_name": ..., "config": ...}`, as `_policy_config` writes it)."""
    if isinstance(policy, dict):
        return _quantized_from_config(policy)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        raise TypeError(
            f"Invalid policy {policy!r}: a DTypePolicyMap maps layer paths to policies; "
            "turn it into rules with kpe.Rules.from_dtype_policy_map(...)."
        )
    if isinstance(policy, keras.DTypePolicy):
        if policy.quantization_mode is None:
            return DTypePolicy(policy.name)
        if type(policy) not in _QUANTIZED_CLASSES.values():
            raise TypeError(
                f"Invalid policy {policy!r}: a quantized policy in rules is one of Keras's "
                f"{', '.join(_QUANTIZED_CLASSES)}."
            )
        return type(policy).from_config(policy.get_config())
    if isinstance(policy, str) and QUANTIZED_MARK in policy:
        return from_name(policy)  # Keras builds quantized policies
    return DTypePolicy(policy)


def _policy_config(policy: keras.DTypePolicy) -> str | dict:
    """A policy's name, or for a quantized one its name does not rebuild (a float8
    policy's `amax_history_length`), its class name and config."""
    if isinstance(policy, DTypePolicy) or from_name(policy.name) == policy:
        return policy.name
    return {"class_name": type(policy).__name__, "config": policy.get_config()}


def _quantized_from_config(config: dict) -> keras.DTypePolicy:
    cls = _QUANTIZED_CLASSES.get(config.get("class_name"))
    if cls is None or not isinstance(config.get("config"), dict):
        raise ValueError(
            f"Invalid policy config {config!r}: expected a policy name, or "
            "{'class_name': ..., 'config': {...}} naming one of Keras's quantized "
            f"policies: {', '.join(_QUANTIZED_CLASSES)}."
        )
    try:
        return cls.from_config(config["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"Invalid policy config {config!r}: {e}") from None


def _policy_key(policy: keras.DTypePolicy) -> Any:
    """A hashable key consistent with `==` (Keras's policies are not hashable)."""
    return policy if isinstance(policy, DTypePolicy) else (type(policy).__name__, policy.name)


# A rule's `layer` is written as Keras serializes a class: a registered class
# by its registered name ("package>Name"), a Keras layer by its public name
# ("keras.layers.Dense"), any other class by "module:Qualname" (what older
# versions wrote for every class). Reading one never imports a module the
# text names, unless the file is trusted (`safe_mode=False`): it is looked up
# among Keras's public layers, registered classes and custom objects.
_KERAS_NAMESPACES = ("keras.layers", "keras", "keras.models")
# `(custom_objects, safe_mode)` of the load in progress (`resolving_classes`).
_RESOLVING: contextvars.ContextVar[tuple[dict, bool | None]] = contextvars.ContextVar(
    "keras_policy_ext_resolving", default=({}, None)
)


@functools.cache
def _keras_layers() -> dict[str, type]:
    """Keras's public layer classes by public name, canonical names first."""
    found: dict[str, type] = {}
    for namespace in _KERAS_NAMESPACES:
        module: Any = keras
        for part in namespace.split(".")[1:]:
            module = vars(module)[part]
        for attr, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, keras.layers.Layer):
                found.setdefault(f"{namespace}.{attr}", value)
    return found


def _old_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _class_path(cls: type) -> str:
    """How a rule's config names its layer class (see `_resolve_class`)."""
    registered = keras.saving.get_registered_name(cls)
    if ">" in registered and keras.saving.get_registered_object(registered) is cls:
        return registered
    public = [name for name, found in _keras_layers().items() if found is cls]
    exact = [name for name in public if name.rpartition(".")[2] == cls.__name__]
    return (exact or public or [_old_path(cls)])[0]


@contextlib.contextmanager
def resolving_classes(
    custom_objects: Mapping[str, Any] | None = None, safe_mode: bool | None = None
) -> Iterator[None]:
    """Resolves rules' layer classes also among `custom_objects`, under `safe_mode`.

    `safe_mode=None` follows Keras (its `deserialize_keras_object` scope,
    `keras.config.enable_unsafe_deserialization()`), else safe; Keras's
    global switch, when set, wins, as in Keras.

    >>> import keras, keras_policy_ext as kpe
    >>> class Mine(keras.layers.Dense):
    ...     pass
    >>> config = {"rules": [{"policy": "float32", "layer": "Mine"}], "default": None}
    >>> with kpe.rules.resolving_classes(custom_objects={"Mine": Mine}):
    ...     kpe.Rules.from_config(config)
    Rules([Rule('float32', layer=Mine)])
    """
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError(
            f"Invalid custom_objects={custom_objects!r}: expected a dict of names to classes."
        )
    token = _RESOLVING.set((dict(custom_objects or {}), safe_mode))
    try:
        yield
    finally:
        _RESOLVING.reset(token)


def _safe_mode() -> bool:
    flag = internals.keras_safe_mode()  # set by deserialize_keras_object and load_model
    if flag is None:
        flag = _RESOLVING.get()[1]
    return flag is not False


def _resolve_class(text: Any) -> type:
    """The layer class a rule's config names, among the classes the user trusts.

    Keras's public layers, classes registered with
    `keras.saving.register_keras_serializable` and custom objects (given to
    the loading function, `resolving_classes`, or `keras.saving.custom_object_scope`)
    are looked up by name, or by the `module:Qualname` older versions
    wrote; a module is imported only when the file is trusted
    (`safe_mode=False`).
    """
    if not isinstance(text, str) or not text:
        raise ValueError(
            f"Invalid layer={text!r} in a rule's config: expected a layer class name such "
            "as 'keras.layers.Dense', 'package>Name' or 'module:Qualname'."
        )
    custom = _RESOLVING.get()[0]
    module, colon, qualname = text.partition(":")
    if colon:  # as older versions wrote every class
        trusted = [*custom.values(), *_keras_layers().values()]
        trusted += keras.saving.get_custom_objects().values()
        trusted.append(keras.saving.get_registered_object(qualname.rpartition(".")[2]))
        found = next((c for c in trusted if isinstance(c, type) and _old_path(c) == text), None)
        if found is None and not _safe_mode():
            found = _import_trusted(module, qualname)
    else:
        found = custom.get(text) or _keras_layers().get(text)
        found = found or keras.saving.get_registered_object(text)
    if isinstance(found, type) and issubclass(found, keras.layers.Layer):
        return found
    if colon and not _safe_mode():
        raise ValueError(
            f"Cannot resolve the layer class {text!r} of a rule: with safe_mode=False, "
            f"importing {module!r} gave no keras.layers.Layer subclass {qualname!r}."
        )
    name = (qualname if colon else text).rpartition(".")[2].rpartition(">")[2]
    raise ValueError(
        f"Cannot resolve the layer class {text!r} of a rule: it is not a Keras layer, "
        "nor a layer class registered with keras.saving.register_keras_serializable "
        "or given in custom_objects, and loading never imports a module a file names. "
        "Register the class (and import its module before loading), pass "
        f"custom_objects={{{name!r}: {name}}} to the loading function, or, for a file "
        "you trust, load it with safe_mode=False (which imports the module it names)."
    )


def _import_trusted(module: str, qualname: str) -> Any:
    """What `module:qualname` names, importing `module`: for trusted files only."""
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found


@dataclasses.dataclass(frozen=True, eq=True)
class Rule:
    """Picks `policy` for the layers that meet every criterion given.

    Args:
        policy: a policy name or object, Keras's quantized ones included
            (`"int8_from_mixed_bfloat16"`, built by Keras).
        layer: a layer class (subclasses match too).
        name: a glob string or a compiled `re` pattern (its flags kept),
            matched in full against the layer's name.
        path: the same, against the path the layer is built under.
        reason: why the rule exists; `kpe.explain` shows it.

    Raises:
        TypeError: `layer` is not a `keras.layers.Layer` subclass, or a
            policy of the wrong kind (a `DTypePolicyMap`).
        ValueError: no criterion (`layer`, `name` or `path`), a bad pattern,
            or an unknown policy name.

    >>> import re, keras, keras_policy_ext as kpe
    >>> kpe.Rule("float32", name=re.compile("(query|key|value)"), reason="demo")
    Rule('float32', name=re.compile('(query|key|value)'), reason='demo')
    >>> kpe.Rule("int8_from_mixed_bfloat16", layer=keras.layers.Dense).policy.quantization_mode
    'int8'
    """

    policy: keras.DTypePolicy
    layer: type | None = None
    name: Pattern | None = None
    path: Pattern | None = None
    reason: str = ""

    def __init__(
        self,
        policy: Any,
        *,
        layer: type | None = None,
        name: str | re.Pattern | Pattern | None = None,
        path: str | re.Pattern | Pattern | None = None,
        reason: str = "",
    ) -> None:
        if layer is not None and not (
            isinstance(layer, type) and issubclass(layer, keras.layers.Layer)
        ):
            raise TypeError(f"Invalid rule: layer={layer!r} is not a keras.layers.Layer subclass.")
        if layer is None and name is None and path is None:
            raise ValueError(
                "Invalid rule: it has no criterion (layer=, name= or path=) and "
                "would match every layer; give the policy as the default instead."
            )
        set_ = object.__setattr__
        set_(self, "policy", _fresh(policy))  # this rule's own object
        set_(self, "layer", layer)
        set_(self, "name", None if name is None else Pattern(name))
        set_(self, "path", None if path is None else Pattern(path))
        set_(self, "reason", reason)

    def matches(self, cls: type, name: str, path: str) -> bool:
        """Whether a layer of class `cls`, named `name`, built under `path` matches."""
        return (
            (self.layer is None or issubclass(cls, self.layer))
            and (self.name is None or self.name.matches(name))
            and (self.path is None or self.path.matches(path))
        )

    def covers(self, other: Rule) -> bool:
        """Whether this rule matches every layer `other` matches: each of its
        criteria is absent or accepts everything `other`'s accepts."""
        return (
            (
                self.layer is None
                or (other.layer is not None and issubclass(other.layer, self.layer))
            )
            and (self.name is None or (other.name is not None and self.name.covers(other.name)))
            and (self.path is None or (other.path is not None and self.path.covers(other.path)))
        )

    def get_config(self) -> dict:
        return {
            "policy": _policy_config(self.policy),
            "layer": None if self.layer is None else _class_path(self.layer),
            "name": None if self.name is None else self.name.get_config(),
            "path": None if self.path is None else self.path.get_config(),
            "reason": self.reason,
        }

    @classmethod
    def from_config(cls, config: dict) -> Rule:
        layer, name, path = (config.get(k) for k in ("layer", "name", "path"))
        return cls(
            config["policy"],
            layer=None if layer is None else _resolve_class(layer),
            name=None if name is None else Pattern.from_config(name),
            path=None if path is None else Pattern.from_config(path),
            reason=config.get("reason", ""),
        )

    def __repr__(self) -> str:
        parts = [repr(self.policy.name)]
        if self.layer is not None:
            parts.append(f"layer={self.layer.__name__}")
        for key in ("name", "path"):
            if getattr(self, key) is not None:
                parts.append(f"{key}={getattr(self, key)!r}")
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        return f"Rule({', '.join(parts)})"

    def __hash__(self) -> int:
        return hash((_policy_key(self.policy), self.layer, self.name, self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Which rule picked a layer's policy, and why."""

    layer: str
    layer_class: str
    path: str
    policy: str
    # Index of the rule that picked the policy (for a sublayer that follows its
    # parent, the parent's rule); None: the default, or not placed by rules.
    rule: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.layer_class} {self.path!r} -> {self.policy}: {self.reason}"


@keras.saving.register_keras_serializable(package="keras_policy_ext", name="Rules")
class Rules:
    """Ordered policy rules, first match wins, and a default.

    Rules compose with `+` (the left operand's rules first, its default kept
    unless it has none). Rules act when Keras builds a layer, through the
    plugin: use them in `kpe.policy_scope(rules=...)`, `kpe.retarget` or
    `kpe.load_model`.

    Args:
        rules: `kpe.Rule`s, tried in order.
        default: the policy of layers no rule matches; `None` leaves it to
            the scope the rules are used in.

    Raises:
        ValueError: a rule that an earlier one shadows (it could never
            match), or an unknown default policy name.
        TypeError: an item that is not a `kpe.Rule`.

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.Rules([kpe.Rule("float32", layer=keras.layers.Softmax)], default="mixed_float16")
    Rules([Rule('float32', layer=Softmax)], default='mixed_float16')
    """

    def __init__(self, rules: Iterable[Rule] = (), default: Any = None) -> None:
        rules = tuple(rules)
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"Invalid rules: {rule!r} is not a kpe.Rule.")
        # Copies: these rules own their policy objects (see `owner_of`).
        self.rules: tuple[Rule, ...] = tuple(dataclasses.replace(r) for r in rules)
        for j, later in enumerate(self.rules):
            for i, earlier in enumerate(self.rules[:j]):
                if earlier.covers(later):
                    raise ValueError(
                        f"Rule {j} ({later!r}) can never match: rule {i} "
                        f"({earlier!r}) comes first and matches every layer it would."
                    )
        self.default: keras.DTypePolicy | None = None if default is None else _fresh(default)
        for policy in self._policies():
            object.__setattr__(policy, _OWNER, self)  # fresh objects: ours to link

    def _policies(self) -> list[keras.DTypePolicy]:
        owned = [rule.policy for rule in self.rules]
        return owned + ([self.default] if self.default is not None else [])

    def with_default(self, default: Any) -> Rules:
        """The same rules with another default.

        Args:
            default: the new default policy (a name or a policy), or `None`.

        Returns:
            A new `Rules`; these are unchanged.

        >>> import keras, keras_policy_ext as kpe
        >>> kpe.rules.FLOAT32_NUMERICS.with_default("mixed_bfloat16").default
        <DTypePolicy "mixed_bfloat16">
        """
        return Rules(self.rules, default)

    def __add__(self, other: Rules) -> Rules:
        return Rules(self.rules + other.rules, self.default or other.default)

    def pick(self, layer_class: type, name: str, path: str | None = None) -> keras.DTypePolicy:
        """The policy for a layer of that class, name and path.

        Args:
            layer_class: the layer's class.
            name: the layer's name.
            path: the path it is built under; `None` matches `name`.

        Returns:
            The first matching rule's policy, else the default.

        Raises:
            ValueError: no rule matches and there is no default.

        >>> import keras, keras_policy_ext as kpe
        >>> rules = kpe.rules.FLOAT32_NUMERICS.with_default("mixed_float16")
        >>> rules.pick(keras.layers.Softmax, "attention_scores")
        <DTypePolicy "float32">
        """
        index, policy, reason = self.explain(layer_class, name, path)
        if policy is None:
            raise ValueError(
                f"No rule matches {layer_class.__name__} {name!r} and these rules have no default."
            )
        return policy

    def explain(
        self, layer_class: type, name: str, path: str | None = None
    ) -> tuple[int | None, keras.DTypePolicy | None, str]:
        """Which rule picks the policy for a layer's class, name and path, and why.

        Args:
            layer_class: the layer's class.
            name: the layer's name.
            path: the path it is built under; `None` matches `name`.

        Returns:
            `(rule index or None, policy, reason)`; the policy is the default
            (maybe `None`) when no rule matches.

        >>> import keras, keras_policy_ext as kpe
        >>> rules = kpe.Rules([kpe.Rule("float32", name="head*")], default="bfloat16")
        >>> rules.explain(keras.layers.Dense, "head_logits")[0]
        0
        >>> rules.explain(keras.layers.Dense, "hidden")[2]
        'no rule matched: the default'
        """
        path = name if path is None else path
        for i, rule in enumerate(self.rules):
            if rule.matches(layer_class, name, path):
                why = f"rule {i} {rule!r}" + (f": {rule.reason}" if rule.reason else "")
                return i, rule.policy, why
        return None, self.default, "no rule matched: the default"

    def place(
        self, layer: keras.layers.Layer, path: str, fallback: keras.DTypePolicy
    ) -> keras.DTypePolicy:
        """Picks `layer`'s policy and records why, for `kpe.explain`.

        What the plugin calls while Keras builds a layer under rules. A layer
        no rule matches follows its parent when a rule picked the parent's
        policy (a class rule on a `MultiHeadAttention` reaches its projections
        and softmax, as Keras's own `dtype=` does), else takes the default,
        else `fallback`.

        Args:
            layer: the layer being built.
            path: the path it is built under; it ends with the layer's name
                (Keras 3.10 and older resolve a layer's policy before they set
                `layer.name`).
            fallback: the policy `layer` was built with (its parent's, for a
                sublayer a composite layer builds), or the policy in force.

        Returns:
            The policy `layer` takes.

        >>> import keras, keras_policy_ext as kpe
        >>> rules = kpe.Rules([kpe.Rule("float32", layer=keras.layers.Softmax)])
        >>> layer = keras.layers.Softmax()
        >>> rules.place(layer, layer.name, kpe.DTypePolicy("mixed_float16"))
        <DTypePolicy "float32">
        """
        name = path.rpartition("/")[2]
        index, policy, reason = self.explain(type(layer), name, path)
        if index is None:
            parent = next((i for i, r in enumerate(self.rules) if r.policy is fallback), None)
            if parent is not None:
                index, policy = parent, fallback
                rule = self.rules[parent]
                reason = f"no rule matched: its parent's policy, from rule {parent} {rule!r}" + (
                    f": {rule.reason}" if rule.reason else ""
                )
            elif policy is None:
                policy, reason = fallback, "no rule matched: its parent's policy"
        _EXPLANATIONS[layer] = Explanation(
            name, type(layer).__name__, path, policy.name, index, reason
        )
        return policy

    def to_dtype_policy_map(self) -> keras.dtype_policies.DTypePolicyMap:
        """Keras's `DTypePolicyMap` for rules that match on `path` only.

        Keras maps paths (exactly, then by regex `fullmatch`), so class and
        name rules cannot be exported.

        Returns:
            A new `keras.dtype_policies.DTypePolicyMap` (regex flags written
            inline), with the rules' default as its default.

        Raises:
            ValueError: a class or name rule (named), or rules without a
                default.

        >>> import keras, keras_policy_ext as kpe
        >>> rules = kpe.Rules([kpe.Rule("float32", path="model/head")], default="bfloat16")
        >>> rules.to_dtype_policy_map()["model/head"].name
        'float32'
        """
        unsupported = [r for r in self.rules if r.layer is not None or r.name is not None]
        if unsupported:
            raise ValueError(
                f"Cannot export {unsupported!r} to a DTypePolicyMap: it maps layer "
                "paths only, not classes or names."
            )
        if self.default is None:
            raise ValueError("Cannot export rules without a default to a DTypePolicyMap.")
        return keras.dtype_policies.DTypePolicyMap(
            default_policy=_fresh(self.default),
            policy_map={rule.path.keras_regex(): _fresh(rule.policy) for rule in self.rules},
        )

    @classmethod
    def from_dtype_policy_map(cls, policy_map: keras.dtype_policies.DTypePolicyMap) -> Rules:
        """Rules equivalent to a Keras `DTypePolicyMap` (left unchanged).

        Exact keys come first, as Keras looks them up first; the others are
        regular expressions matched in full. Quantized policies are kept.

        Args:
            policy_map: a `keras.dtype_policies.DTypePolicyMap`.

        Returns:
            A new `Rules` of path rules, with the map's default.

        >>> import keras, keras_policy_ext as kpe
        >>> policy_map = keras.dtype_policies.DTypePolicyMap(
        ...     default_policy=keras.DTypePolicy("mixed_bfloat16"),
        ...     policy_map={"model/dense": keras.dtype_policies.get("int8_from_mixed_bfloat16")})
        >>> rules = kpe.Rules.from_dtype_policy_map(policy_map)
        >>> rules.rules
        (Rule('int8_from_mixed_bfloat16', path=re.compile('model/dense')),)
        >>> rules.to_dtype_policy_map()["model/dense"] == policy_map["model/dense"]
        True
        """
        keys = list(policy_map)
        exact = [k for k in keys if re.escape(k) == k]
        ordered = exact + [k for k in keys if k not in exact]
        return cls(
            [
                Rule(policy_map[k], path=re.compile(re.escape(k) if k in exact else k))
                for k in ordered
            ],
            default=policy_map.default_policy,
        )

    def get_config(self) -> dict:
        return {
            "rules": [rule.get_config() for rule in self.rules],
            "default": None if self.default is None else _policy_config(self.default),
        }

    @classmethod
    def from_config(cls, config: dict) -> Rules:
        return cls([Rule.from_config(r) for r in config["rules"]], config.get("default"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rules) and (self.rules, self.default) == (
            other.rules,
            other.default,
        )

    def __hash__(self) -> int:
        return hash((self.rules, None if self.default is None else _policy_key(self.default)))

    def __repr__(self) -> str:
        default = "" if self.default is None else f", default={self.default.name!r}"
        return f"Rules([{', '.join(map(repr, self.rules))}]{default})"


def owner_of(policy: Any) -> Rules | None:
    """The `Rules` that made this policy object, if any."""
    return getattr(policy, _OWNER, None) if isinstance(policy, keras.DTypePolicy) else None


def explain(layer: keras.layers.Layer) -> Explanation:
    """Why `layer` has its policy: the rule that picked it, or that none did.

    Args:
        layer: a Keras layer.

    Returns:
        An `Explanation`, whose `str()` reads as one line: the layer, its
        policy, and the rule (with its reason) or why none applied.

    Raises:
        TypeError: `layer` is not a `keras.layers.Layer`.

    >>> import keras, keras_policy_ext as kpe
    >>> rules = kpe.Rules([kpe.Rule("float32", layer=keras.layers.Softmax,
    ...                             reason="exp overflows in float16")])
    >>> with kpe.installed(), kpe.config.policy_scope("mixed_float16", rules=rules):
    ...     softmax = keras.layers.Softmax(name="softmax")
    ...     dense = keras.layers.Dense(2, name="dense")
    >>> print(kpe.explain(softmax))
    Softmax 'softmax' -> float32: rule 0 Rule('float32', ...): exp overflows in float16
    >>> print(kpe.explain(dense))
    Dense 'dense' -> mixed_float16: no rule matched: the default
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            "kpe.explain expects a layer (a keras.layers.Layer instance). "
            f"Received: layer={layer!r} (of type {type(layer).__name__})"
        )
    found = _EXPLANATIONS.get(layer)
    if found is not None:
        return found
    return Explanation(
        layer.name, type(layer).__name__, layer.path or layer.name,
        layer.dtype_policy.name, None,
        "not placed by rules: its dtype argument or the global policy",
    )  # fmt: skip


_NORMALIZATION_REASON = (
    "normalization reduces means and variances over many terms: in float16 "
    "sums of squares overflow and small variances lose their digits (PyTorch "
    "autocast runs layer_norm, group_norm and batch_norm in float32)"
)
FLOAT32_NUMERICS = Rules(
    [
        Rule("float32", layer=getattr(keras.layers, name), reason=_NORMALIZATION_REASON)
        for name in (
            "LayerNormalization",
            "BatchNormalization",
            "GroupNormalization",
            "RMSNormalization",  # Keras 3.9 and newer
            "UnitNormalization",
        )
        if hasattr(keras.layers, name)
    ]
    + [
        Rule(
            "float32",
            layer=keras.layers.Softmax,
            reason="exp overflows float16 above 11.1 and the normalizing sum loses "
            "precision (PyTorch autocast runs softmax in float32)",
        )
    ]
)
