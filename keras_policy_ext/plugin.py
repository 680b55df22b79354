"""The plugin: unchanged Keras code resolves its policies through kpe.

This is the only module that touches Keras internals. `install()` replaces
these attributes, after checking that each exists on the installed Keras:

- `keras.src.dtype_policies.dtype_policy.dtype_policy`: Keras's global
  getter. `keras.src.dtype_policies.get(None)` (every stock layer built with
  `dtype=None`) and `keras.DTypePolicy(None)` call it.
- `keras.src.dtype_policies.dtype_policy.set_dtype_policy`: Keras's setter.
- `keras.src.dtype_policies.get`: what `Layer.__init__`, the `dtype_policy`
  setter, metrics and losses call to turn `dtype=` into a policy. kpe's
  replacement also places the layer `Layer.__init__` is building when policy
  rules govern it (`keras_policy_ext.rules`): it recognises that caller by
  the code object of `keras.layers.Layer.__init__` (checked to call
  `dtype_policies.get`), and reads the name scope the layer is built under
  with `keras.src.backend.common.name_scope.current_path`.

- `keras.src.trainers.trainer.Trainer.compile` (`Model.compile`): wrapped
  so that `auto_scale_loss` scales by dtypes, with kpe's floored
  `LossScaleOptimizer` (`keras_policy_ext.scaled_fit`).

and, for user code, the public names bound to those functions:
`keras.config.{dtype_policy, set_dtype_policy}`,
`keras.mixed_precision.{dtype_policy, global_policy, set_dtype_policy,
set_global_policy}` and `keras.dtype_policies.get`.

Each is replaced by its kpe counterpart (`keras_policy_ext.config`,
`keras_policy_ext.dtype_policies.get`); `uninstall()` puts Keras's own back
where kpe's function still stands, and leaves a patch another library made
after `install()` in place. Keras's legacy `keras._tf_keras` namespace is
left alone. `sublayers` lists a layer's nested layers with
`Layer._flatten_layers`, also checked.

`keras_policy_ext.config` reads and writes Keras's per-thread global policy
through this module (`_keras_global`, `_set_keras_global`) and tells a
`keras.utils.clear_session()` apart by `_keras_session`: they use
`keras.src.backend.common.global_state`, whose `GLOBAL_STATE_TRACKER`
`clear_session()` replaces.

The plugin is in place while an explicit `install()` stands or any
`installed()` block is open, in any thread: `installed()` blocks are
counted, `install()` / `uninstall()` set and clear one flag (not counted),
and `uninstall()` inside an open block takes effect when the last block
exits.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras.src.backend.common import global_state

from keras_policy_ext import config, dtype_policies, rules, scaled_fit

_LAYER_INIT = keras.layers.Layer.__init__.__code__


def _current_path() -> str:
    from keras.src.backend.common.name_scope import current_path

    return current_path()


def _get(identifier: Any = None) -> keras.DTypePolicy:
    """`keras_policy_ext.dtype_policies.get`, placing layers that rules govern.

    A layer built with `dtype=None` in a scope with rules, or with a policy
    object some rules own (a composite layer handing its policy down), gets
    the policy those rules pick for its class, name and path.
    """
    caller = sys._getframe(1)
    if caller.f_code is _LAYER_INIT:
        owner = config.scoped_rules() if identifier is None else rules.owner_of(identifier)
        if owner is not None:
            layer = caller.f_locals["self"]
            path = "/".join(p for p in (_current_path(), layer.name) if p)
            fallback = identifier if identifier is not None else config.dtype_policy()
            return owner.place(layer, path, fallback)
    return dtype_policies.get(identifier)


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer nested in `layer` (not `layer` itself), depth first."""
    return list(layer._flatten_layers(include_self=False))


_COMPILE = ("keras.src.trainers.trainer.Trainer", "compile")


def _compiler(original: Callable) -> Callable:
    """kpe's `Model.compile` around Keras's `original`.

    Each `install()` makes one that holds the `compile` it wraps, so that a
    call that started before `uninstall()` still finishes.
    """

    def _compile(self: keras.Model, optimizer: Any = "rmsprop", *args: Any, **kwargs: Any) -> None:
        """`Model.compile`, loss-scaling by dtypes (`keras_policy_ext.compile`)."""
        auto_scale_loss = kwargs.pop("auto_scale_loss", True)
        optimizer = scaled_fit.scaled_optimizer(self, optimizer, auto_scale_loss)
        return original(self, optimizer, *args, auto_scale_loss=False, **kwargs)

    return _compile


_GETTER = "keras.src.dtype_policies.dtype_policy"
# (module or class, attribute, kpe replacement)
_TARGETS: tuple[tuple[str, str, Callable], ...] = (
    (*_COMPILE, _compiler),  # made per install around Keras's
    (_GETTER, "dtype_policy", config.dtype_policy),
    (_GETTER, "set_dtype_policy", config.set_dtype_policy),
    ("keras.src.dtype_policies", "get", _get),
    ("keras.config", "dtype_policy", config.dtype_policy),
    ("keras.config", "set_dtype_policy", config.set_dtype_policy),
    ("keras.mixed_precision", "dtype_policy", config.dtype_policy),
    ("keras.mixed_precision", "global_policy", config.dtype_policy),
    ("keras.mixed_precision", "set_dtype_policy", config.set_dtype_policy),
    ("keras.mixed_precision", "set_global_policy", config.set_dtype_policy),
    ("keras.dtype_policies", "get", dtype_policies.get),
)

_lock = threading.Lock()
# (path, attr) -> (module or class, Keras's function, kpe's) while installed
_patched: dict[tuple[str, str], tuple[object, Callable, Callable]] = {}
_explicit = False  # an install() stands
_blocks = 0  # installed() blocks open, in every thread


def _keras_global() -> keras.DTypePolicy | None:
    """Keras's own global policy of this thread, as stored (`None`: unset)."""
    return global_state.get_global_attribute("dtype_policy")


def _set_keras_global(policy: keras.DTypePolicy | None) -> None:
    """Stores Keras's own global policy of this thread (`None` unsets it)."""
    global_state.set_global_attribute("dtype_policy", policy)


def _keras_session() -> weakref.ref:
    """A token of Keras's state, which `keras.utils.clear_session()` replaces."""
    return weakref.ref(global_state.GLOBAL_STATE_TRACKER)


def owner(path: str) -> Any:
    """The module, or class in a module, that a dotted path names (or `None`)."""
    module_name, obj, rest = path, None, []
    while module_name and obj is None:
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            module_name, _, last = module_name.rpartition(".")
            rest.insert(0, last)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj


def _resolve() -> list[tuple[str, object, str, Callable]]:
    missing, resolved = [], []
    for path, attr, replacement in _TARGETS:
        target = owner(path)
        if not callable(getattr(target, attr, None)):
            missing.append(f"{path}.{attr}")
        else:
            resolved.append((path, target, attr, replacement))
    if not hasattr(keras.layers.Layer, "_flatten_layers"):
        missing.append("keras.layers.Layer._flatten_layers")
    if not {"dtype_policies", "get"} <= set(_LAYER_INIT.co_names):
        missing.append("keras.layers.Layer.__init__ calling dtype_policies.get")
    try:
        _current_path()
    except ImportError:
        missing.append("keras.src.backend.common.name_scope.current_path")
    if not hasattr(global_state, "GLOBAL_STATE_TRACKER"):
        missing.append("keras.src.backend.common.global_state.GLOBAL_STATE_TRACKER")
    if missing:
        raise RuntimeError(
            "keras_policy_ext cannot install its plugin on Keras "
            f"{keras.__version__}: missing {', '.join(missing)}. The plugin "
            "supports the Keras versions named in keras_policy_ext's "
            "requirements (keras>=3.15,<4)."
        )
    return resolved


def _activate() -> None:
    """Puts kpe's functions in place (under `_lock`); all or nothing."""
    if _patched:
        return
    try:
        for path, target, attr, replacement in _resolve():
            original = getattr(target, attr)
            if replacement is _compiler:
                replacement = _compiler(original)
            setattr(target, attr, replacement)
            _patched[(path, attr)] = (target, original, replacement)
    except BaseException:
        _deactivate()
        raise


def _deactivate() -> None:
    """Puts Keras's functions back where kpe's still stand (under `_lock`)."""
    for (path, attr), (target, original, replacement) in _patched.items():
        if getattr(target, attr, None) is replacement:
            setattr(target, attr, original)
    _patched.clear()


def install() -> None:
    """Makes Keras resolve policies through kpe (idempotent).

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

    >>> import keras_policy_ext as kpe
    >>> kpe.is_installed()
    False
    """
    return bool(_patched)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Installs the plugin for a block, counting blocks across threads.

    The plugin stays while any block is open or an explicit `install()`
    stands: a block exiting never removes it under another thread's block,
    nor undoes an `install()`.

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.installed():
    ...     type(keras.layers.Dense(4).dtype_policy) is kpe.DTypePolicy
    True
    >>> kpe.is_installed()
    False
    """
    global _blocks
    with _lock:
        _activate()
        _blocks += 1
    try:
        yield
    finally:
        with _lock:
            _blocks -= 1
            if not _blocks and not _explicit:
                _deactivate()
