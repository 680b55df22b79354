"""The plugin: unchanged Keras code resolves its policies through kpe.

`install()` replaces, through `keras_policy_ext.internals` (which checks
each against the installed Keras first):

- Keras's global getter and setter (`keras.src.dtype_policies.dtype_policy`
  `.dtype_policy` / `.set_dtype_policy`): `dtype_policies.get(None)` (every
  stock layer built with `dtype=None`) and `keras.DTypePolicy(None)` call
  the getter.
- `keras.src.dtype_policies.get`: what `Layer.__init__`, the `dtype_policy`
  setter, metrics and losses call to turn `dtype=` into a policy. kpe's
  replacement also places the layer `Layer.__init__` is building when policy
  rules govern it (`keras_policy_ext.rules`).
- `Model.compile` (`keras.src.trainers.trainer.Trainer.compile`): wrapped so
  that `auto_scale_loss` scales by dtypes, with kpe's floored
  `LossScaleOptimizer` (`keras_policy_ext.loss_scale.optimizer`).

and, for user code, the public names bound to those functions:
`keras.config.{dtype_policy, set_dtype_policy}`,
`keras.mixed_precision.{dtype_policy, global_policy, set_dtype_policy,
set_global_policy}` and `keras.dtype_policies.get`.

Each is replaced by its kpe counterpart (`keras_policy_ext.config`,
`keras_policy_ext.dtype_policies.get`); `uninstall()` puts Keras's own back
where kpe's function still stands, and leaves a patch another library made
after `install()` in place. Keras's legacy `keras._tf_keras` namespace is
left alone.

The plugin is in place while an explicit `install()` stands or any
`installed()` block is open, in any thread: `installed()` blocks are
counted, `install()` / `uninstall()` set and clear one flag (not counted),
and `uninstall()` inside an open block takes effect when the last block
exits.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import keras

from keras_policy_ext import config, dtype_policies, internals, rules
from keras_policy_ext.internals import fixes, versions
from keras_policy_ext.loss_scale.optimizer import scaled_optimizer
from keras_policy_ext.validation import PolicyRefusedError


def _get(identifier: Any = None) -> keras.DTypePolicy:
    """`keras_policy_ext.dtype_policies.get`, placing layers that rules govern.

    A layer built with `dtype=None` in a scope with rules, or with a policy
    object some rules own (a composite layer handing its policy down), gets
    the policy those rules pick for its class, name and path. A layer whose
    kpe policy the backend cannot honour is refused: `PolicyRefusedError`
    (`keras_policy_ext.internals.fixes.refusal`).
    """
    building = internals.layer_being_built()
    if building is None:
        return dtype_policies.get(identifier)
    layer, name = building
    placing = config.scoped_rules() if identifier is None else rules.owner_of(identifier)
    if placing is not None:
        path = "/".join(p for p in (internals.current_name_scope(), name) if p)
        fallback = identifier if identifier is not None else config.dtype_policy()
        policy = placing.place(layer, path, fallback)
    else:
        policy = dtype_policies.get(identifier)
    reason = fixes.refusal(layer, policy, name)
    if reason is not None:
        raise PolicyRefusedError(reason)
    return policy


def _compiler(original: Callable) -> Callable:
    """kpe's `Model.compile` around Keras's `original`.

    Each `install()` makes one that holds the `compile` it wraps, so that a
    call that started before `uninstall()` still finishes. It carries the
    original's name, signature and docstring (`functools.wraps`), so that
    `help(model.compile)` and IDEs read Keras's while the plugin is in place.
    """

    @functools.wraps(original)
    def compile(self: keras.Model, optimizer: Any = "rmsprop", *args: Any, **kwargs: Any) -> None:
        # `Model.compile`, loss-scaling by dtypes (`keras_policy_ext.compile_model`).
        auto_scale_loss = kwargs.pop("auto_scale_loss", True)
        optimizer = scaled_optimizer(self, optimizer, auto_scale_loss)
        return original(self, optimizer, *args, auto_scale_loss=False, **kwargs)

    return compile


_GLOBAL = internals.GLOBAL_POLICY_MODULE
# (module or class, attribute, kpe replacement): what install() replaces.
_NONE: tuple[str, ...] = ()  # a getter: called with no argument
PATCHES = internals.Patches(
    [
        (
            internals.TRAINER_CLASS,
            "compile",
            internals.Patches.wrap(_compiler),
            ("self", "optimizer", "auto_scale_loss="),
        ),
        (_GLOBAL, "dtype_policy", config.dtype_policy, _NONE),
        (_GLOBAL, "set_dtype_policy", config.set_dtype_policy, ("policy",)),
        (internals.POLICIES_MODULE, "get", _get, ("identifier",)),
        ("keras.config", "dtype_policy", config.dtype_policy, _NONE),
        ("keras.config", "set_dtype_policy", config.set_dtype_policy, ("policy",)),
        ("keras.mixed_precision", "dtype_policy", config.dtype_policy, _NONE),
        ("keras.mixed_precision", "global_policy", config.dtype_policy, _NONE),
        ("keras.mixed_precision", "set_dtype_policy", config.set_dtype_policy, ("policy",)),
        ("keras.mixed_precision", "set_global_policy", config.set_dtype_policy, ("policy",)),
        ("keras.dtype_policies", "get", dtype_policies.get, ("identifier",)),
    ]
)

_lock = threading.Lock()
_explicit = False  # an install() stands
_blocks = 0  # installed() blocks open, in every thread


def _activate() -> None:
    """Puts kpe's functions and its fixes of Keras's defects in place, all or
    nothing (under `_lock`).

    Refuses a Keras older than the verified range and warns once about a newer
    one (`internals.versions.check_version`); checks every attribute it will
    patch, the plugin's and the fixes', for presence and signature before
    patching any; a failure while patching reverts everything this call did.
    """
    if PATCHES.applied:
        return
    versions.check_version()
    problems = PATCHES.problems() + fixes.problems()
    if problems:
        raise internals.refuse("install its plugin", problems)
    PATCHES.apply()
    try:
        fixes.apply_all()
    except BaseException:
        PATCHES.revert()
        raise


def _deactivate() -> None:
    """Reverts `_activate` (under `_lock`)."""
    fixes.revert_all()
    PATCHES.revert()


def install() -> None:
    """Makes Keras resolve policies through kpe (idempotent), all or nothing.

    Also applies kpe's fixes of Keras's defects that the installed Keras
    still has (`keras_policy_ext.internals.fixes`).

    Raises:
        RuntimeError: Keras is older than the verified range
            (`keras_policy_ext.internals.versions.VERIFIED_RANGE`), or an
            internal kpe patches is missing or has another signature; the
            error names the Keras version and the range. Keras is then exactly
            as before the call (every patch made is reverted) and
            `is_installed()` is False.

    A Keras newer than the range gets one `RuntimeWarning`. A fix whose probe
    raises is applied, with a `RuntimeWarning` naming it.

    Afterwards `keras.config.set_dtype_policy`, `keras.config.dtype_policy`,
    `keras.mixed_precision.*` and every layer's `dtype=` name or `None` use
    kpe policies and kpe's process-wide default and scopes. It stands until
    `uninstall()`, whatever `installed()` blocks open and exit meanwhile.

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.install()
    >>> keras.config.set_dtype_policy("mixed_float16")
    >>> type(keras.layers.Dense(4).dtype_policy) is kpe.DTypePolicy
    True
    >>> keras.config.set_dtype_policy("float32")
    >>> kpe.uninstall()
    """
    global _explicit
    with _lock:
        _activate()
        _explicit = True


def uninstall() -> None:
    """Withdraws `install()`: puts Keras's own functions back (idempotent).

    While `installed()` blocks are open (in any thread), the plugin stays
    until the last of them exits. Only attributes that still hold kpe's
    function are restored: a patch made after `install()` stays. Keras's
    own global policy is as `install()` found it (kpe's default, set while
    installed, is kpe's and stays there).

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.install(); kpe.uninstall()
    >>> type(keras.layers.Dense(4, dtype="float32").dtype_policy) is keras.DTypePolicy
    True
    """
    global _explicit
    with _lock:
        _explicit = False
        if not _blocks:
            _deactivate()


def is_installed() -> bool:
    """Whether the plugin is installed.

    Returns:
        `True` while an `install()` stands or an `installed()` block is open.

    >>> import keras_policy_ext as kpe
    >>> kpe.is_installed()
    False
    """
    return PATCHES.applied


def installed_explicitly() -> bool:
    """Whether an `install()` stands (not withdrawn by `uninstall()`).

    >>> import keras_policy_ext as kpe
    >>> with kpe.installed():
    ...     kpe.is_installed(), kpe.plugin.installed_explicitly()
    (True, False)
    """
    return _explicit


class installed:  # noqa: N801 (a function's name: users call `kpe.installed()`)
    """Installs the plugin for a `with` block, counting blocks across threads.

    The plugin patches Keras for the whole process, not for the block's
    code alone: while any block is open (in any thread) or an explicit
    `install()` stands, every layer built anywhere resolves its policy
    through kpe. A block exiting never removes the plugin under another
    thread's block, nor undoes an `install()`.

    `installed()` is a context manager, not a question: use it only as
    `with kpe.installed():`; to ask whether the plugin is in place, call
    `kpe.is_installed()`. Its truth value is an error, so that
    `if kpe.installed():` fails at once instead of being always true.

    Entering the block installs the plugin (unless a block or `install()`
    already did); its `with` target is `None`.

    Raises:
        TypeError: when its truth value is asked (`if kpe.installed():`).

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.installed():
    ...     type(keras.layers.Dense(4).dtype_policy) is kpe.DTypePolicy
    True
    >>> kpe.is_installed()
    False
    >>> if kpe.installed():
    ...     pass
    Traceback (most recent call last):
    ...
    TypeError: kpe.installed() is a context manager: write `with kpe.installed():` ...
    """

    def __enter__(self) -> None:
        global _blocks
        with _lock:
            _activate()
            _blocks += 1

    def __exit__(self, *exc_info: object) -> None:
        global _blocks
        with _lock:
            _blocks -= 1
            if not _blocks and not _explicit:
                _deactivate()

    def __bool__(self) -> bool:
        raise TypeError(
            "kpe.installed() is a context manager: write `with kpe.installed():` to "
            "install the plugin for a block; to ask whether it is installed, call "
            "kpe.is_installed()."
        )
