"""The global policy: a process-wide default and context-local scopes.

`set_dtype_policy` sets one default for the whole process, seen by every
thread (Keras's own global is per thread). `policy_scope` overrides it for
the current context only: other threads and asyncio tasks do not see it.

Without the plugin (`keras_policy_ext.install()`), stock Keras layers read
Keras's per-thread global, so kpe mirrors its policy there on every change:
layers built in the calling thread follow kpe; layers built in other threads
do so only with the plugin installed.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import keras

from keras_policy_ext.policy import DTypePolicy, from_name

# Keras's own setter, captured before the plugin can replace it.
_keras_set_dtype_policy = keras.config.set_dtype_policy

_lock = threading.Lock()
_default: keras.DTypePolicy | None = None  # None: the policy of floatx()
_scoped: contextvars.ContextVar[keras.DTypePolicy | None] = contextvars.ContextVar(
    "keras_policy_ext_scoped_policy", default=None
)
_scoped_rules: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "keras_policy_ext_scoped_rules", default=None
)
_floatx_policies: dict[str, DTypePolicy] = {}


def _as_policy(policy: Any) -> keras.DTypePolicy:
    if isinstance(policy, keras.DTypePolicy):
        return policy
    if isinstance(policy, str):
        return from_name(policy)
    raise ValueError(
        "Invalid `policy` argument. Expected the string name of a policy "
        "(such as 'mixed_float16') or a `DTypePolicy` instance. "
        f"Received: policy={policy!r} (of type {type(policy)})"
    )


def _mirror_to_keras() -> None:
    _keras_set_dtype_policy(dtype_policy())


def _get_default() -> keras.DTypePolicy | None:
    return _default


def _set_default(policy: keras.DTypePolicy | None) -> None:
    global _default
    with _lock:
        _default = policy
        _mirror_to_keras()


def dtype_policy() -> keras.DTypePolicy:
    """Returns the policy in force here: the innermost scope, else the default.

    Until `set_dtype_policy` is called, the default is the float policy of
    `keras.config.floatx()`.

    >>> import keras_policy_ext as kpe
    >>> kpe.config.dtype_policy()
    <DTypePolicy "float32">
    """
    policy = _scoped.get()
    if policy is not None:
        return policy
    policy = _default
    if policy is not None:
        return policy
    floatx = keras.config.floatx()
    policy = _floatx_policies.get(floatx)
    if policy is None:
        policy = _floatx_policies.setdefault(floatx, DTypePolicy(floatx))
    return policy


def set_dtype_policy(policy: keras.DTypePolicy | str) -> None:
    """Sets the process-wide default policy, seen by every thread.

    `policy` is a policy name or a `keras.DTypePolicy` instance (used as
    given). Bad input raises `ValueError` / `TypeError` and leaves the
    previous default in force.

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.config.set_dtype_policy("mixed_bfloat16")
    >>> keras.layers.Dense(4).dtype_policy
    <DTypePolicy "mixed_bfloat16">
    >>> kpe.config.set_dtype_policy("float32")
    """
    _set_default(_as_policy(policy))


def scoped_rules() -> Any:
    """The `keras_policy_ext.Rules` of the innermost scope here, or `None`.

    >>> import keras_policy_ext as kpe
    >>> kpe.config.scoped_rules() is None
    True
    """
    return _scoped_rules.get()


@contextlib.contextmanager
def policy_scope(
    policy: keras.DTypePolicy | str | None = None, *, rules: Any = None
) -> Iterator[keras.DTypePolicy]:
    """Puts `policy` (and `rules`) in force for the current context.

    Scopes nest, restore the outer policy also when the body raises, and
    are context-local: other threads and asyncio tasks keep their own.
    With `rules` (a `keras_policy_ext.Rules`, which needs the plugin), each
    layer built in the scope gets the policy its first matching rule picks;
    `policy` (else the rules' default, else the policy in force) is the
    default.

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.config.policy_scope("mixed_float16") as policy:
    ...     keras.layers.Dense(4).dtype_policy
    <DTypePolicy "mixed_float16">
    >>> kpe.config.dtype_policy()
    <DTypePolicy "float32">
    """
    if rules is not None:
        from keras_policy_ext import plugin

        if not plugin.is_installed():
            raise RuntimeError(
                "Policy rules act when Keras builds a layer, through the plugin: "
                "call keras_policy_ext.install() (or use `with "
                "keras_policy_ext.installed():`) before policy_scope(rules=...)."
            )
        rules = rules.with_default(policy or rules.default or dtype_policy())
        policy = rules.default
    elif policy is None:
        raise ValueError("policy_scope needs a policy, rules, or both.")
    policy = _as_policy(policy)
    token, rules_token = _scoped.set(policy), _scoped_rules.set(rules)
    try:
        _mirror_to_keras()
        yield policy
    finally:
        _scoped_rules.reset(rules_token)
        _scoped.reset(token)
        _mirror_to_keras()
