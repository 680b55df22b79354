"""The global policy: a process-wide default and context-local scopes.

`set_dtype_policy` sets one default for the whole process, seen by every
thread (Keras's own global is per thread). `policy_scope` overrides it for
the current context only: `dtype_policy()` in other threads and other
asyncio tasks does not see it. `keras.utils.clear_session()` resets the
default to the policy of `keras.config.floatx()`, as it resets Keras's own.

What stock Keras layers built with `dtype=None` follow:

- With the plugin (`keras_policy_ext.install()`): `dtype_policy()`, i.e.
  the default in every thread and scopes per context (per thread and per
  asyncio task).
- Without it: Keras's own global of the thread that builds them, where kpe
  writes only what the user asks for. `set_dtype_policy` (a user setting)
  stores its policy there for the calling thread, or, inside scopes, for
  when they have closed. A scope stores its policy there on entry; on exit
  it puts back exactly the object it found (the very object, or "unset"),
  never kpe's default, so a policy set with `keras.config.set_dtype_policy`
  survives kpe's scopes and `keras_policy_ext.retarget`; a
  `keras.config.set_dtype_policy` made inside a scope stands after it. As
  Keras's global is one per thread, so is a scope for stock layers: asyncio
  tasks sharing a thread see the latest scope entered among those still
  open. Layers built in other threads do not see the calling thread's
  scopes, nor the default unless it was set there.

With the plugin installed, `set_dtype_policy` leaves Keras's global alone,
so that after `uninstall()` stock Keras finds it as `install()` did.

>>> import keras, keras_policy_ext as kpe
>>> keras.config.set_dtype_policy("mixed_bfloat16")  # a user setting, through Keras
>>> with kpe.config.policy_scope("float16"):
...     keras.layers.Dense(2).dtype_policy.name
'float16'
>>> keras.config.dtype_policy().name  # Keras's global, exactly as the user left it
'mixed_bfloat16'
>>> keras.config.set_dtype_policy("float32")
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

import keras

from keras_policy_ext import internals
from keras_policy_ext._state import STATE
from keras_policy_ext.policy import DTypePolicy, as_policy
from keras_policy_ext.rules import Rules

_floatx_policies: dict[str, DTypePolicy] = {}


def _plugin_installed() -> bool:
    """Whether Keras's global getter is kpe's (the plugin is installed)."""
    return getattr(internals.resolve(internals.GLOBAL_POLICY_MODULE), "dtype_policy", None) is (
        dtype_policy
    )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """kpe's default and Keras's global policy of one thread, as `snapshot()` found them."""

    default: keras.DTypePolicy | None
    keras_global: keras.DTypePolicy | None


def snapshot() -> Snapshot:
    """The global policy state here, for `restore` (tests, `kpe.testing.clean_state`).

    Returns:
        A `Snapshot`: kpe's default and the calling thread's Keras global
        policy, the very objects.

    >>> import keras_policy_ext as kpe
    >>> saved = kpe.config.snapshot()
    >>> kpe.config.set_dtype_policy("mixed_float16")
    >>> kpe.config.restore(saved)
    >>> kpe.config.dtype_policy()
    <DTypePolicy "float32">
    """
    return Snapshot(STATE.default, internals.keras_global_policy())


def restore(saved: Snapshot) -> None:
    """Puts back kpe's default and this thread's Keras global policy (the very objects).

    Args:
        saved: what `snapshot()` returned.

    >>> import keras_policy_ext as kpe
    >>> saved = kpe.config.snapshot()
    >>> kpe.config.set_dtype_policy("bfloat16")
    >>> kpe.config.restore(saved)
    >>> kpe.config.dtype_policy().name
    'float32'
    """
    with STATE.lock:
        STATE.default = saved.default
        internals.set_keras_global_policy(saved.keras_global)


class _Frame:
    """An open scope's hold on Keras's global: its policy, and what it found."""

    __slots__ = ("below", "policy")

    def __init__(self, policy: keras.DTypePolicy, below: keras.DTypePolicy | None) -> None:
        self.policy, self.below = policy, below


class _ThreadFrames(threading.local):
    def __init__(self) -> None:
        self.frames: list[_Frame] = []  # the scopes open in this thread, oldest first


_thread = _ThreadFrames()


def _enter_keras(policy: keras.DTypePolicy) -> _Frame:
    """Stores a scope's policy as Keras's global of this thread."""
    frame = _Frame(policy, internals.keras_global_policy())
    internals.set_keras_global_policy(policy)
    _thread.frames.append(frame)
    return frame


def _exit_keras(frame: _Frame) -> None:
    """Puts back what `frame`'s scope found in Keras's global, unless changed since."""
    frames = _thread.frames
    index = next((i for i, f in enumerate(frames) if f is frame), None)
    if index is None:  # entered in another thread: that thread's global is not ours
        return
    del frames[index]
    if index < len(frames):  # a later scope (another asyncio task's) is still open
        if frames[index].below is frame.policy:
            frames[index].below = frame.below
    elif internals.keras_global_policy() is frame.policy:
        internals.set_keras_global_policy(frame.below)
    # else the user set Keras's global inside the scope: theirs stands


def _set_keras_by_user(policy: keras.DTypePolicy) -> None:
    """A user setting for Keras's global of this thread, behind the open scopes."""
    frames = _thread.frames
    for i, frame in enumerate(frames):
        if i == 0 or frame.below is not frames[i - 1].policy:
            frame.below = policy  # what a user setting there would come back as
    if not frames or internals.keras_global_policy() is not frames[-1].policy:
        internals.set_keras_global_policy(policy)


def dtype_policy() -> keras.DTypePolicy:
    """Returns the policy in force here: the innermost scope, else the default.

    Until `set_dtype_policy` is called (and after `keras.utils.clear_session()`),
    the default is the float policy of `keras.config.floatx()`.

    Returns:
        A `keras.DTypePolicy`: the innermost `policy_scope`'s policy in this
        thread or asyncio task, else the process-wide default.

    >>> import keras_policy_ext as kpe
    >>> kpe.config.dtype_policy()
    <DTypePolicy "float32">
    """
    policy = STATE.in_force()
    if policy is not None:
        return policy
    floatx = keras.config.floatx()
    policy = _floatx_policies.get(floatx)
    if policy is None:
        policy = _floatx_policies.setdefault(floatx, DTypePolicy(floatx))
    return policy


def set_dtype_policy(policy: keras.DTypePolicy | str) -> None:
    """Sets the process-wide default policy, seen by every thread.

    Without the plugin, this also sets Keras's own global of the calling
    thread (once the scopes open there have closed), for stock layers built
    there; with it, Keras's own global is left alone.

    Args:
        policy: a policy name (`"mixed_bfloat16"`, a role name such as
            `"p=f32,c=bf16"`) or a `keras.DTypePolicy` instance, used as given.

    Raises:
        ValueError: an unknown policy name, or `None`; nothing changes.
        TypeError: neither a name nor a `keras.DTypePolicy`; nothing changes.

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.config.set_dtype_policy("mixed_bfloat16")
    >>> keras.layers.Dense(4).dtype_policy
    <DTypePolicy "mixed_bfloat16">
    >>> kpe.config.set_dtype_policy("float32")
    """
    policy = as_policy(policy)
    with STATE.lock:
        STATE.default = policy
        if not _plugin_installed():
            _set_keras_by_user(policy)


def scoped_rules() -> Rules | None:
    """The `keras_policy_ext.Rules` of the innermost scope here, or `None`.

    Returns:
        The `Rules` of the innermost `policy_scope(rules=...)` open in this
        thread or asyncio task, else `None`.

    >>> import keras_policy_ext as kpe
    >>> kpe.config.scoped_rules() is None
    True
    """
    return STATE.scoped_rules.get()


@contextlib.contextmanager
def policy_scope(
    policy: keras.DTypePolicy | str | None = None, *, rules: Rules | None = None
) -> Iterator[keras.DTypePolicy]:
    """Puts `policy` (and `rules`) in force for the current context.

    Scopes nest, restore the outer policy also when the body raises, and
    are context-local: other threads and asyncio tasks keep their own.
    With `rules` (a `keras_policy_ext.Rules`, which needs the plugin), each
    layer built in the scope gets the policy its first matching rule picks;
    `policy` (else the rules' default, else the policy in force) is the
    default. Bad arguments raise `ValueError` / `TypeError` / `RuntimeError`
    before anything changes.

    Without the plugin, stock layers follow a scope through Keras's own
    per-thread global, which the scope restores on exit to the very object
    it found (see the module's docstring).

    Args:
        policy: the policy in force inside the block: a name or a
            `keras.DTypePolicy`; `None` with `rules` takes the rules'
            default, else the policy in force.
        rules: a `keras_policy_ext.Rules`, or `None`.

    Returns:
        A context manager; its `with` target is the policy in force inside
        the block, as a `keras.DTypePolicy`.

    Raises:
        ValueError: neither `policy` nor `rules`, or an unknown policy name.
        TypeError: `policy` or `rules` of the wrong type.
        RuntimeError: `rules` without the plugin installed (rules act when
            Keras builds a layer, through the plugin).

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.policy_scope("mixed_float16") as policy:
    ...     keras.layers.Dense(4).dtype_policy
    <DTypePolicy "mixed_float16">
    >>> kpe.config.dtype_policy()
    <DTypePolicy "float32">
    >>> with kpe.config.policy_scope("float16", rules=5):
    ...     pass
    Traceback (most recent call last):
    TypeError: Invalid rules=5 (of type int): expected a keras_policy_ext.Rules, or None.
    """
    if rules is not None:
        if not isinstance(rules, Rules):
            raise TypeError(
                f"Invalid rules={rules!r} (of type {type(rules).__name__}): "
                "expected a keras_policy_ext.Rules, or None."
            )
        if not _plugin_installed():
            raise RuntimeError(
                "Policy rules act when Keras builds a layer, through the plugin: "
                "call keras_policy_ext.install() (or use `with "
                "keras_policy_ext.installed():`) before policy_scope(rules=...)."
            )
        if policy is not None:
            policy = as_policy(policy)
        elif rules.default is not None:
            policy = rules.default
        else:
            policy = dtype_policy()
        rules = rules.with_default(policy)
        policy = rules.default
    elif policy is None:
        raise ValueError("policy_scope needs a policy, rules, or both.")
    policy = as_policy(policy)
    token, rules_token = STATE.scoped.set(policy), STATE.scoped_rules.set(rules)
    try:
        frame = _enter_keras(policy)
        try:
            yield policy
        finally:
            _exit_keras(frame)
    finally:
        STATE.scoped_rules.reset(rules_token)
        STATE.scoped.reset(token)
