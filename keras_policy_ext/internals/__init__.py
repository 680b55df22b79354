"""Every Keras internal kpe relies on, in one package, each checked and named.

Keras 3 has no public hook for what kpe does (resolve every layer's policy
through kpe, place a layer by rules while it is built, read Keras's own
per-thread global), so kpe uses Keras's private modules and attributes here
and nowhere else (`tests/test_architecture.py` pins it): the other modules
call the functions below, and `keras_policy_ext.internals.fixes` holds the
fixes of Keras's defects under kpe policies (each names the attributes it
patches, and the plugin applies them). Code outside this package still
relies on how Keras behaves where its public API says nothing:
`keras_policy_ext.loss_scale.optimizer` subclasses Keras's
`LossScaleOptimizer` and, while Keras's own `apply` fails in an eager JAX
loop (keras#19244, probed by `keras_loss_scale_apply_fails_eagerly`),
re-implements that step after Keras's source. `INTERNALS` lists each internal,
what kpe uses it for and the Keras versions it was verified against;
`check()` probes them and raises a `RuntimeError` naming what is missing
(`keras_policy_ext.install()` calls it, and the policy module checks the
fields it needs at import). `Patches` replaces Keras attributes all or
nothing, after checking each for presence and for the signature kpe's
replacement relies on; `keras_policy_ext.internals.versions` holds the
verified Keras range.

>>> from keras_policy_ext import internals
>>> internals.check()  # every internal is there on this Keras
>>> internals.INTERNALS[0].name, internals.INTERNALS[0].verified[0]
('keras.src.dtype_policies.dtype_policy.dtype_policy', '3.8.0')
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keras

from keras_policy_ext.internals.versions import (
    VERIFIED_KERAS,
    VERIFIED_RANGE,
    keras_version,
    signature_mismatch,
)

# Where Keras keeps what the plugin replaces.
GLOBAL_POLICY_MODULE = "keras.src.dtype_policies.dtype_policy"
POLICIES_MODULE = "keras.src.dtype_policies"
TRAINER_CLASS = "keras.src.trainers.trainer.Trainer"

# `keras.DTypePolicy`'s fields that Keras's own code reads (its `__init__`,
# which parses only Keras's names, is not called for kpe's policies).
POLICY_FIELDS = ("_name", "_compute_dtype", "_variable_dtype", "_quantization_mode")
POLICY_FIELDS_INTERNAL = "keras.DTypePolicy fields " + ", ".join(POLICY_FIELDS)

_LAYER_INIT = keras.layers.Layer.__init__.__code__


def resolve(path: str) -> Any:
    """The module, or the class in a module, that a dotted path names (or `None`).

    >>> from keras_policy_ext import internals
    >>> internals.resolve("keras.src.trainers.trainer.Trainer").__name__
    'Trainer'
    >>> internals.resolve("keras.no_such_module") is None
    True
    """
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


def _global_state() -> Any:
    from keras.src.backend.common import global_state

    return global_state


def keras_global_policy() -> keras.DTypePolicy | None:
    """Keras's own global policy of this thread, as stored (`None`: unset).

    Read without `keras.config.dtype_policy()`, which the plugin replaces
    and which makes a policy when none is stored.
    """
    return _global_state().get_global_attribute("dtype_policy")


def set_keras_global_policy(policy: keras.DTypePolicy | None) -> None:
    """Stores Keras's own global policy of this thread (`None` unsets it)."""
    _global_state().set_global_attribute("dtype_policy", policy)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Runs a probe without leaving a trace, the same way every time: seeded, with
    Keras's automatic-name counters and the random streams restored after it (a
    user's first `SGD()` after it is still `sgd`; a user's next random draw is the
    one it would have been) and warnings silenced (`isolation.isolated`).

    >>> import keras
    >>> from keras_policy_ext import internals
    >>> keras.utils.clear_session()
    >>> first = keras.optimizers.SGD().name
    >>> keras.utils.clear_session()
    >>> with internals.quiet():
    ...     _ = keras.optimizers.SGD(), keras.Variable(1.0)
    >>> keras.optimizers.SGD().name == first
    True
    """
    from keras_policy_ext.internals.isolation import isolated

    with isolated(0), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def keras_session() -> weakref.ref:
    """A token of Keras's global state, which `keras.utils.clear_session()` replaces."""
    return weakref.ref(_global_state().GLOBAL_STATE_TRACKER)


def current_name_scope() -> str:
    """The name scope path layers are being built under (`""` at the top)."""
    from keras.src.backend.common.name_scope import current_path

    return current_path()


def _resolves_policies(code: Any) -> bool:
    return {"dtype_policies", "get"} <= set(code.co_names)


# The constructors that turn a layer's `dtype=` into its policy: `Layer.__init__`
# (Keras 3.11 and newer), else `Operation.__init__`, which `Layer.__init__` calls
# (3.10 and older; it sets the name only after resolving the policy).
_POLICY_RESOLVERS = tuple(
    code for code in (_LAYER_INIT, keras.Operation.__init__.__code__) if _resolves_policies(code)
)


def layer_being_built(depth: int = 2) -> tuple[keras.layers.Layer, str] | None:
    """`(layer, its name)` when the caller `depth` frames up is the Keras
    constructor resolving a layer's policy, else `None`.

    With the default, the caller of the function that calls this: the
    plugin's `dtype_policies.get` recognises `Layer.__init__` (or, on Keras
    3.10 and older, `Operation.__init__`) by its code object and reads its
    `self`, and the name from the layer or, before Keras has set it, from
    the constructor's `name`.
    """
    frame = sys._getframe(depth)
    if frame.f_code not in _POLICY_RESOLVERS:
        return None
    layer = frame.f_locals.get("self")
    if not isinstance(layer, keras.layers.Layer):
        return None  # an op (Operation.__init__ also builds `keras.ops` operations)
    name = vars(layer).get("name") or vars(layer).get("_name") or frame.f_locals.get("name")
    return layer, name


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer nested in `layer` (not `layer` itself), depth first.

    >>> import keras
    >>> from keras_policy_ext import internals
    >>> mha = keras.layers.MultiHeadAttention(2, 4)
    >>> _ = mha(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 3, 8)))
    >>> sorted({type(l).__name__ for l in internals.sublayers(mha)})
    ['Dropout', 'EinsumDense', 'Softmax']
    """
    return list(layer._flatten_layers(include_self=False))


def set_policy_fields(
    policy: keras.DTypePolicy, name: str, compute_dtype: str, variable_dtype: str
) -> None:
    """Sets the fields Keras's code reads on a policy (kpe's skip Keras's `__init__`)."""
    values = (name, compute_dtype, variable_dtype, None)
    for field, value in zip(POLICY_FIELDS, values):
        object.__setattr__(policy, field, value)


def keras_safe_mode() -> bool | None:
    """Keras's safe-mode flag of the load in progress (`None`: no load sets it)."""
    from keras.src.saving.serialization_lib import in_safe_mode

    return in_safe_mode()


def allowed_dtypes() -> tuple[str, ...]:
    """The dtype names Keras accepts (`keras.src.backend.common.dtypes.ALLOWED_DTYPES`)."""
    from keras.src.backend.common.dtypes import ALLOWED_DTYPES

    return tuple(ALLOWED_DTYPES)


def backend_distribution_lib() -> Any:
    """The running backend's `distribution_lib` (`None` where it has none: torch)."""
    from keras.src import backend

    return backend.distribution_lib


def loss_scale_index(optimizer: keras.optimizers.LossScaleOptimizer) -> int:
    """Where a `LossScaleOptimizer`'s `dynamic_scale` stands in its `variables`.

    `stateless_apply` (JAX) takes and returns the optimizer's variables as a
    list in that order.
    """
    return next(i for i, v in enumerate(optimizer.variables) if v is optimizer.dynamic_scale)


def optimizer_trainable_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """The variables an optimizer was built for (`apply` with none given updates them).

    A `LossScaleOptimizer` of Keras 3.11 and older builds only its inner
    optimizer, which then holds them.
    """
    variables = optimizer._trainable_variables
    inner = getattr(optimizer, "inner_optimizer", None)
    if not variables and inner is not None:
        variables = inner._trainable_variables
    return variables


def overwrites_with_gradient(optimizer: keras.optimizers.Optimizer, variable: Any) -> bool:
    """Whether `apply` assigns `variable` its gradient (Keras's `overwrite_with_gradient`).

    Asked of the optimizer where it says (Keras 3.9 and newer), else read from the
    variable as Keras 3.8's `apply` does.
    """
    ask = getattr(optimizer, "_overwrite_variable_with_gradient", None)
    if ask is not None:
        return ask(variable)
    return bool(getattr(variable, "overwrite_with_gradient", False))


@dataclasses.dataclass(frozen=True)
class Internal:
    """One Keras internal: what kpe uses it for, and how to see it is there."""

    name: str
    used_for: str
    present: Callable[[], bool]
    verified: tuple[str, ...] = VERIFIED_KERAS


def _has(path: str, attr: str) -> Callable[[], bool]:
    return lambda: callable(getattr(resolve(path), attr, None))


def _imports(fn: Callable[[], Any]) -> Callable[[], bool]:
    def present() -> bool:
        try:
            fn()
        except (ImportError, AttributeError, StopIteration):
            return False
        return True

    return present


INTERNALS: tuple[Internal, ...] = (
    Internal(
        f"{GLOBAL_POLICY_MODULE}.dtype_policy",
        "the plugin replaces Keras's global getter: `dtype_policies.get(None)` (every "
        "layer built with dtype=None) and `keras.DTypePolicy(None)` call it",
        _has(GLOBAL_POLICY_MODULE, "dtype_policy"),
    ),
    Internal(
        f"{GLOBAL_POLICY_MODULE}.set_dtype_policy",
        "the plugin replaces Keras's global setter",
        _has(GLOBAL_POLICY_MODULE, "set_dtype_policy"),
    ),
    Internal(
        f"{POLICIES_MODULE}.get",
        "the plugin replaces what Layer.__init__, the dtype_policy setter, metrics and "
        "losses call to turn dtype= into a policy",
        _has(POLICIES_MODULE, "get"),
    ),
    Internal(
        f"{TRAINER_CLASS}.compile",
        "the plugin wraps Model.compile so that auto_scale_loss scales by dtypes",
        _has(TRAINER_CLASS, "compile"),
    ),
    Internal(
        "keras.layers.Layer.__init__ (or keras.Operation.__init__, Keras 3.10 and older) "
        "calling dtype_policies.get (its code object, its frame's `self` and `name`)",
        "rules place the layer being built (`layer_being_built`)",
        lambda: len(_POLICY_RESOLVERS) == 1,
    ),
    Internal(
        "keras.src.backend.common.name_scope.current_path",
        "rules match the path a layer is built under (`current_name_scope`)",
        _imports(current_name_scope),
    ),
    Internal(
        "keras.layers.Layer._flatten_layers",
        "`sublayers`: the layers nested in a layer or model",
        lambda: callable(getattr(keras.layers.Layer, "_flatten_layers", None)),
    ),
    Internal(
        "keras.src.backend.common.global_state (get_global_attribute, "
        "set_global_attribute, GLOBAL_STATE_TRACKER)",
        "Keras's per-thread global policy read and restored exactly, and "
        "keras.utils.clear_session() told apart (`keras_global_policy`, `keras_session`)",
        _imports(lambda: (keras_global_policy(), keras_session())),
    ),
    Internal(
        POLICY_FIELDS_INTERNAL,
        "kpe's DTypePolicy is a keras.DTypePolicy that parses names itself: Keras's "
        "own methods read these fields (`set_policy_fields`)",
        lambda: set(POLICY_FIELDS) <= set(vars(keras.DTypePolicy("float32"))),
    ),
    Internal(
        "keras.src.saving.serialization_lib.in_safe_mode",
        "a rule's layer class is imported only when Keras loads with safe_mode=False "
        "(`keras_safe_mode`)",
        _imports(keras_safe_mode),
    ),
    Internal(
        "keras.src.backend.common.dtypes.ALLOWED_DTYPES",
        "the dtype names Keras accepts as a policy name, which kpe's names table mirrors",
        _imports(allowed_dtypes),
    ),
    Internal(
        "keras.optimizers.LossScaleOptimizer: dynamic_scale among .variables",
        "kpe's LossScaleOptimizer clips the scale stateless_apply returns (`loss_scale_index`)",
        _imports(lambda: _built_loss_scale_optimizer().dynamic_scale),
    ),
    Internal(
        "keras.optimizers.Optimizer._trainable_variables, ._overwrite_variable_with_gradient "
        "(Keras 3.9 and newer; 3.8: Variable.overwrite_with_gradient)",
        "kpe's LossScaleOptimizer.apply without ops.cond on JAX (keras#19244) updates "
        "what Keras's apply updates",
        _imports(
            lambda: overwrites_with_gradient(
                _built_loss_scale_optimizer(),
                optimizer_trainable_variables(_built_loss_scale_optimizer())[0],
            )
        ),
    ),
)


def _built_loss_scale_optimizer() -> keras.optimizers.LossScaleOptimizer:
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    optimizer.build([keras.Variable(1.0)])
    loss_scale_index(optimizer)  # StopIteration (not there) fails the probe
    return optimizer


_present: dict[str, bool] = {}  # Keras does not change within a process: probe once


def missing(names: Iterable[str] | None = None) -> list[str]:
    """The internals (all, or those named) that this Keras lacks."""
    wanted = None if names is None else set(names)
    gone = []
    for internal in INTERNALS:
        if wanted is not None and internal.name not in wanted:
            continue
        if internal.name not in _present:
            with quiet():  # the probes build optimizers and variables
                _present[internal.name] = bool(internal.present())
        if not _present[internal.name]:
            gone.append(internal.name)
    return gone


def check(names: Iterable[str] | None = None) -> None:
    """Raises `RuntimeError` naming every internal (all, or those named) this Keras lacks."""
    gone = missing(names)
    if gone:
        raise RuntimeError(
            f"keras_policy_ext cannot run on Keras {keras_version()}: it lacks "
            f"{'; '.join(gone)}. keras_policy_ext's use of Keras internals was verified "
            f"on {VERIFIED_RANGE}."
        )


def target_problem(path: str, attr: str, expects: Any = None) -> str | None:
    """What keeps kpe from patching `path.attr` on this Keras (`None`: nothing).

    The attribute must be there, and match `expects` (`versions.signature_mismatch`).

    >>> from keras_policy_ext import internals
    >>> internals.target_problem("keras.src.trainers.trainer.Trainer", "compile")
    >>> internals.target_problem("keras.src.trainers.trainer.Trainer", "nope")
    'keras.src.trainers.trainer.Trainer.nope is missing'
    """
    owner = resolve(path)
    if owner is None or not hasattr(owner, attr):
        return f"{path}.{attr} is missing"
    value = vars(owner).get(attr) if isinstance(owner, type) else None
    if not isinstance(value, property):
        value = getattr(owner, attr)
    mismatch = signature_mismatch(value, expects)
    return None if mismatch is None else f"{path}.{attr} has {mismatch}"


def refuse(what: str, problems: Iterable[str]) -> RuntimeError:
    """The error for Keras internals kpe cannot patch: names each, the Keras
    version and the verified range."""
    return RuntimeError(
        f"keras_policy_ext cannot {what} on Keras {keras_version()}: "
        f"{'; '.join(problems)}. keras_policy_ext's use of Keras internals was verified "
        f"on {VERIFIED_RANGE}."
    )


class Patches:
    """Replacements of Keras attributes, applied all or nothing, reverted where ours stand.

    `targets` are `(dotted path of a module or class, attribute, replacement)`
    or `(..., replacement, expects)`, `expects` being the signature kpe relies
    on (`versions.signature_mismatch`); a replacement that is a
    `Patches.wrap(make)` is made at each `apply()` as `make(original)`,
    holding the function it wraps.
    """

    class wrap:  # noqa: N801 (a marker, used as `Patches.wrap(make)`)
        def __init__(self, make: Callable[[Callable], Callable]) -> None:
            self.make = make

    def __init__(self, targets: Iterable[tuple]) -> None:
        self.targets = tuple(targets)
        self._applied: dict[tuple[str, str], tuple[object, Callable, Callable]] = {}
        self._lock = threading.Lock()

    @property
    def applied(self) -> bool:
        return bool(self._applied)

    def current(self, path: str, attr: str) -> Any:
        """What the attribute holds now (kpe's replacement, Keras's, or another's)."""
        return getattr(resolve(path), attr, None)

    def _full_targets(self) -> list[tuple[str, str, Any, Any]]:
        return [(*target, None)[:4] for target in self.targets]  # expects: None if not given

    def problems(self) -> list[str]:
        """Each target this Keras lacks or has with another signature."""
        found = [target_problem(p, attr, expects) for p, attr, _, expects in self._full_targets()]
        return [problem for problem in found if problem]

    def apply(self) -> None:
        """Puts every replacement in place, or none.

        Raises:
            RuntimeError: naming each internal missing or changed, the Keras
                version and the verified range; nothing is patched then.
        """
        with self._lock:
            if self._applied:
                return
            check()
            problems = self.problems()
            if problems:
                raise refuse("patch Keras", problems)
            try:
                for path, attr, replacement, _ in self._full_targets():
                    target = resolve(path)
                    original = getattr(target, attr)
                    if isinstance(replacement, Patches.wrap):
                        replacement = replacement.make(original)
                    self._applied[(path, attr)] = (target, original, replacement)
                    setattr(target, attr, replacement)
            except BaseException:
                self._revert()
                raise

    def revert(self) -> None:
        """Puts Keras's functions back where kpe's still stand; a later patch stays."""
        with self._lock:
            self._revert()

    def _revert(self) -> None:
        for (_, attr), (target, original, replacement) in reversed(self._applied.items()):
            if getattr(target, attr, None) is replacement:
                setattr(target, attr, original)
        self._applied.clear()
