"""Fixes for the Keras defects that keep layers under kpe policies from conforming.

Each `Fix` names the Keras defect it works around (and its upstream issue),
the backends it concerns, a `probe()` that reproduces the defect with Keras's
*own* policies on the running backend, and `apply()` / `revert()`, which
patch and unpatch exactly the Keras internals listed in `Fix.targets`.
Every patched function acts only on layers whose policy is a kpe
`keras_policy_ext.DTypePolicy`; layers under Keras's own policies keep
behaving as stock Keras, also while fixes are applied, so the probes keep
reproducing the defects and Keras's policies stay the comparison.

`apply_all()` applies every fix for the running backend whose probe still
reproduces its defect (so a fix switches itself off once Keras is fixed),
all or none: a fix that fails half-way leaves Keras as before the call.
`revert_all()` reverts them, `applied()` names those in place, `report()`
says for each fix whether it is applied, skipped (its probe found Keras
right) or failed (its probe raised: a `RuntimeWarning`, and the fix is
applied, since the defect cannot be ruled out and every fix's patch is
harmless where Keras is right). `refusal(layer,
policy)` says why a layer must be refused under a kpe policy the backend
cannot honour. This module is the only one that reaches into `keras.src`
for these fixes; see docs/keras_fixes.md for each defect's cause.

>>> import keras, numpy as np, keras_policy_ext as kpe
>>> from keras_policy_ext.internals import fixes as keras_fixes
>>> names = keras_fixes.apply_all()
>>> layer = keras.layers.LSTM(4, dtype=kpe.DTypePolicy("bfloat16"))
>>> y = layer(np.ones((2, 3, 5), "float32"))
>>> keras.backend.standardize_dtype(y.dtype), layer.cell.recurrent_kernel.dtype
('bfloat16', 'bfloat16')
>>> keras_fixes.revert_all()
>>> keras_fixes.applied()
()
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops
from keras.src.backend.common import global_state
from keras.src.backend.common.variables import get_autocast_scope

from keras_policy_ext.backends import jax_x64_on
from keras_policy_ext.internals import (
    optimizer_trainable_variables,
    overwrites_with_gradient,
    quiet,
    refuse,
    resolve,
    target_problem,
)

# The module of kpe's policy class. This module sits below it (the policy
# module imports `keras_policy_ext.internals`), so it recognises kpe's
# policies by their class there, once that module is loaded: until then no
# kpe policy exists.
POLICY_MODULE = "keras_policy_ext.policy"

HALF_DTYPES = ("float16", "bfloat16")

# What a JAX process without x64 holds instead of each 64-bit dtype.
_JAX_X32 = {"int64": "int32", "uint64": "uint32", "float64": "float32", "complex128": "complex64"}


# --------------------------------------------------------------------------
# Shared helpers.


def is_kpe_policy(policy: Any) -> bool:
    """Whether `policy` is a kpe `keras_policy_ext.DTypePolicy` (or a subclass).

    >>> import keras, keras_policy_ext as kpe
    >>> from keras_policy_ext.internals.fixes import is_kpe_policy
    >>> is_kpe_policy(kpe.DTypePolicy("float16")), is_kpe_policy(keras.DTypePolicy("float16"))
    (True, False)
    """
    module = sys.modules.get(POLICY_MODULE)
    return module is not None and isinstance(policy, module.DTypePolicy)


def kpe_policy(layer: Any) -> keras.DTypePolicy | None:
    """The layer's kpe policy (resolving a `DTypePolicyMap` by path), else `None`.

    >>> import keras, keras_policy_ext as kpe
    >>> from keras_policy_ext.internals.fixes import kpe_policy
    >>> kpe_policy(keras.layers.Dense(2, dtype=kpe.DTypePolicy("mixed_float16")))
    <DTypePolicy "mixed_float16">
    >>> kpe_policy(keras.layers.Dense(2, dtype="mixed_float16")) is None
    True
    """
    policy = getattr(layer, "_dtype_policy", None)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        path = getattr(layer, "path", None)
        policy = policy[path] if path else None
    return policy if is_kpe_policy(policy) else None


def _current_layer() -> Any:
    """The layer whose `__call__` (or `build`) is running: the innermost caller
    of Keras's name scopes, which `Layer.__call__` opens around `call` (a
    `keras.name_scope` the layer's own `call` opens has no caller: the layer's
    scope is further out)."""
    for scope in reversed(global_state.get_global_attribute("name_scope_stack") or ()):
        if scope.caller is not None:
            return scope.caller
    return None


def _dtype(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def holds_float64() -> bool:
    """Whether the running backend can hold float64 (always, except JAX without x64).

    Asked of the backend itself: the dtype a float64 tensor really has.

    >>> import keras
    >>> from keras_policy_ext.internals.fixes import holds_float64
    >>> holds_float64() or keras.backend.backend() == "jax"
    True
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns that it truncates: that is the answer
        return _dtype(ops.zeros((), dtype="float64")) == "float64"


def cannot_hold(dtypes: Any, backend: str | None = None) -> str | None:
    """Why `backend` (default: the running one) cannot hold one of `dtypes`, else `None`.

    The one place kpe decides what a backend can hold: `kpe.validate` and
    `refusal` (the plugin's refusals) both ask it. JAX without x64 holds
    float32 for float64 (and complex64 for complex128): on the running
    backend, asked of JAX itself (`holds_float64`); for JAX asked from
    another backend's process, read from `JAX_ENABLE_X64` as JAX reads it.

    >>> from keras_policy_ext.internals.fixes import cannot_hold
    >>> cannot_hold({"float32", "bfloat16"}, "jax") is None
    True
    >>> cannot_hold({"float64"}, "torch") is None
    True
    >>> print(cannot_hold({"float64"}, "jax"))  # JAX_ENABLE_X64 unset
    x64 is disabled, so float64 variables and tensors silently hold float32; ...
    """
    backend = keras.backend.backend() if backend is None else backend
    if backend != "jax" or not set(dtypes) & {"float64", "complex128"}:
        return None
    if backend == keras.backend.backend():
        if holds_float64():
            return None
    elif jax_x64_on():
        return None
    return (
        "x64 is disabled, so float64 variables and tensors silently hold float32; the "
        "variable and the KerasTensor declare float64, the values are float32. Fix: set "
        "JAX_ENABLE_X64=1 in the environment before JAX is imported (or "
        "jax.config.update('jax_enable_x64', True) at start-up), or use a float32 policy."
    )


# --------------------------------------------------------------------------
# The `Fix` type.


class Target(NamedTuple):
    """One Keras attribute a fix replaces: `make(original)` builds the replacement.

    `expects` is what the replacement relies on in the original: the leading
    parameter names of its signature, or its type (`property`, `dict`);
    checked before anything is patched (`keras_policy_ext.internals.versions`).

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> target = keras_fixes.get("category_encoding_dtype").targets[0]
    >>> target.owner, target.attr
    ('keras.src.layers.preprocessing.category_encoding.CategoryEncoding', '_encode')
    >>> target.expects
    ('self', 'inputs', 'count_weights')
    """

    owner: str  # dotted path of a module or class
    attr: str
    make: Callable[[Any], Any]
    expects: Any = None


_lock = threading.RLock()
# fix name -> [(owner object, attr, had its own attribute, original, replacement)]
_active: dict[str, list[tuple[Any, str, bool, Any, Any]]] = {}
_probed: dict[str, bool] = {}
_probe_errors: dict[str, str] = {}  # fix name -> the error its probe raised


class Fix:
    """One Keras defect and the patch that corrects it for layers under kpe policies.

    `name`, `issue` (the upstream Keras issue, or "no upstream issue found"),
    `defect` (what Keras does wrong), `cause` (where, in keras 3.15.1),
    `backends` (where it occurs) and `targets` (the `Target`s patched).
    `probe()` reproduces the defect with Keras's own policies on the running
    backend: `True` while Keras has it. `apply()` patches (only where the
    backend is concerned and the probe says so, unless `force=True`), and
    `revert()` restores each patched attribute that still holds kpe's
    replacement.

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> fix = keras_fixes.get("category_encoding_dtype")
    >>> fix.probe()
    True
    >>> fix.apply(), fix.applied
    (True, True)
    >>> fix.revert(); fix.applied
    False
    """

    def __init__(
        self,
        name: str,
        *,
        issue: str,
        defect: str,
        cause: str,
        backends: tuple[str, ...],
        probe: Callable[[], bool],
        targets: tuple[Target, ...],
        probe_on_call: bool = False,
    ) -> None:
        self.name, self.issue, self.defect, self.cause = name, issue, defect, cause
        self.backends, self.targets, self._probe = backends, targets, probe
        # A probe that would import more than Keras (TensorFlow, for the
        # TF-backed preprocessing layers) runs when a patched call first needs
        # it, not at `apply()`: the patch is put in place and asks then.
        self.probe_on_call = probe_on_call

    def __repr__(self) -> str:
        return f"<Fix {self.name!r} ({', '.join(self.backends)})>"

    def concerns(self, backend: str | None = None) -> bool:
        """Whether the defect occurs on `backend` (default: the running one).

        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> keras_fixes.get("torch_symbolic_autocast").concerns("jax")
        False
        """
        return (backend or keras.backend.backend()) in self.backends

    def probe(self) -> bool:
        """`True` while Keras (with its own policies) still has the defect here.

        Always `False` on a backend the fix does not concern. Computed once per
        process (the Keras version cannot change within one). A probe that
        raises cannot rule the defect out: it warns once (`RuntimeWarning`
        naming the fix and the error) and counts as `True`, so the fix is
        applied (`report()` says "failed").

        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> keras_fixes.get("half_precision_initializers").probe()  # Keras 3.8 to 3.15
        True
        """
        if not self.concerns():
            return False
        with _lock:
            if self.name not in _probed:
                try:
                    with quiet():
                        _probed[self.name] = bool(self._probe())
                except Exception as error:
                    _probed[self.name] = True
                    _probe_errors[self.name] = f"{type(error).__name__}: {error}"
                    warnings.warn(
                        f"keras_policy_ext: the probe of fix {self.name!r} raised "
                        f"{_probe_errors[self.name]} on Keras {keras.__version__} "
                        f"({keras.backend.backend()}); the fix is applied, since the "
                        "defect cannot be ruled out. Please report it.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            return _probed[self.name]

    def status(self) -> tuple[str, str]:
        """`(status, detail)`: `"applied"`, `"skipped"` (the probe found Keras
        right), `"failed"` (the probe raised; applied when installed),
        `"not concerned"` (another backend's defect) or `"pending"` (applied,
        its probe runs on the patched function's first call).

        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> keras_fixes.get("category_encoding_dtype").status()
        ('skipped', 'not applied now; its probe finds the defect')
        """
        if not self.concerns():
            return "not concerned", f"concerns {', '.join(self.backends)}"
        if self.probe_on_call and self.name not in _probed:
            state = "applied" if self.applied else "not applied now"
            return "pending", f"{state}; probed on its first call"
        needed = self.probe()
        if self.name in _probe_errors:
            return "failed", f"probe raised {_probe_errors[self.name]}"
        if not needed:
            return "skipped", "Keras is right here (its probe finds no defect)"
        if not self.targets:
            return "applied", "its probe finds the defect; kpe's own code works around it"
        if self.applied:
            return "applied", "its probe finds the defect"
        return "skipped", "not applied now; its probe finds the defect"

    def problems(self) -> list[str]:
        """Each target this Keras lacks or has with another signature."""
        found = [target_problem(t.owner, t.attr, t.expects) for t in self.targets]
        return [problem for problem in found if problem]

    @property
    def applied(self) -> bool:
        """Whether this fix's patches are in place.

        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> keras_fixes.get("category_encoding_dtype").applied
        False
        """
        return self.name in _active

    def apply(self, force: bool = False) -> bool:
        """Patches Keras when the backend is concerned and `probe()` is true.

        A fix with `probe_on_call` is patched without probing: its
        replacement runs the probe when a call first needs it, and acts only
        if it is true.

        `force=True` patches even where the probe says Keras is fine (the
        patch must then be harmless). Idempotent; returns whether the fix is
        applied afterwards. Raises `RuntimeError` naming each target this
        Keras lacks or has with another signature than `Target.expects`,
        before patching any; a replacement that fails half-way is reverted
        with the targets patched before it, and its error raised.

        >>> import keras
        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> fix = keras_fixes.get("torch_symbolic_autocast")
        >>> fix.apply() == (keras.backend.backend() == "torch")
        True
        >>> fix.revert()
        """
        if not self.concerns() or not (force or self.probe_on_call or self.probe()):
            return self.applied
        with _lock:
            if self.name in _active:
                return True
            problems = self.problems()
            if problems:
                raise refuse(f"apply fix {self.name!r}", problems)
            records: list[tuple[Any, str, bool, Any, Any]] = []
            try:
                for target in self.targets:
                    owner = resolve(target.owner)
                    had_own = target.attr in vars(owner)
                    original = inspect.getattr_static(owner, target.attr)
                    replacement = target.make(original)
                    records.append((owner, target.attr, had_own, original, replacement))
                    setattr(owner, target.attr, replacement)
            except BaseException:
                _restore(records)  # the targets patched before the failure
                raise
            _active[self.name] = records
            return True

    def revert(self) -> None:
        """Unpatches: restores each attribute that still holds kpe's replacement.

        >>> import keras
        >>> from keras_policy_ext.internals import fixes as keras_fixes
        >>> encode = keras.layers.CategoryEncoding._encode
        >>> fix = keras_fixes.get("category_encoding_dtype")
        >>> fix.apply(); keras.layers.CategoryEncoding._encode is encode
        True
        False
        >>> fix.revert(); keras.layers.CategoryEncoding._encode is encode
        True
        """
        with _lock:
            _restore(_active.pop(self.name, []))


def _restore(records: list[tuple[Any, str, bool, Any, Any]]) -> None:
    """Puts back each recorded original where kpe's replacement still stands."""
    for owner, attr, had_own, original, replacement in reversed(records):
        if vars(owner).get(attr) is not replacement:
            continue  # someone patched over us: theirs stays
        if had_own:
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


# --------------------------------------------------------------------------
# 1. Initializers a backend cannot run in half precision.


class _Float32Fallback:
    """Runs an initializer in the variable's dtype; where the backend cannot, in
    float32, cast to that dtype."""

    def __init__(self, initializer: Callable) -> None:
        self.initializer = initializer

    def __call__(self, shape: Any, dtype: Any = None, **kwargs: Any) -> Any:
        try:
            return self.initializer(shape, dtype=dtype, **kwargs)
        except Exception as error:
            failure = error
        try:
            value = self.initializer(shape, dtype="float32", **kwargs)
        except Exception:
            raise failure from None
        return ops.cast(value, dtype)


_ADD_WEIGHT_POSITIONAL = ("shape", "initializer", "dtype")


def _make_add_weight(original: Callable) -> Callable:
    def add_weight(self, *args: Any, **kwargs: Any) -> Any:
        if kpe_policy(self) is not None and len(args) <= 3:
            named = dict(zip(_ADD_WEIGHT_POSITIONAL, args))
            if not named.keys() & kwargs.keys():  # else Keras raises its own error
                kwargs = {**kwargs, **named}
                args = ()
                dtype = kwargs.get("dtype")
                dtype = self.variable_dtype if dtype is None else _dtype_name(dtype)
                if dtype in HALF_DTYPES:
                    initializer = kwargs.get("initializer") or "glorot_uniform"
                    kwargs["initializer"] = _Float32Fallback(keras.initializers.get(initializer))
        return original(self, *args, **kwargs)

    add_weight.__wrapped__ = original
    return add_weight


def _dtype_name(dtype: Any) -> str:
    return keras.backend.standardize_dtype(dtype)


def _initializer_cases() -> Iterator[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    seen = set()
    for name in sorted(dir(keras.initializers)):
        cls = getattr(keras.initializers, name)
        if not (inspect.isclass(cls) and issubclass(cls, keras.initializers.Initializer)):
            continue
        if cls is keras.initializers.Initializer or cls in seen:
            continue
        seen.add(cls)
        params = inspect.signature(cls).parameters
        kwargs = {"seed": 0} if "seed" in params else {}
        shape = (8, 1, 5) if cls.__name__.startswith("STFT") else (4, 4)
        yield cls.__name__, (lambda cls=cls, kwargs=kwargs: cls(**kwargs)), shape


def initializer_gaps(dtypes: tuple[str, ...] = HALF_DTYPES) -> list[tuple[str, str, str]]:
    """Built-in initializers the running backend cannot run in each dtype.

    Returns `(initializer class name, dtype, error)` for each built-in
    `keras.initializers` class that runs in float32 but raises (or returns
    another dtype) in `dtype`. Seeded, so it draws no global random state.

    >>> from keras_policy_ext.internals.fixes import initializer_gaps
    >>> gaps = initializer_gaps()
    >>> ("Orthogonal", "bfloat16") in {(name, dtype) for name, dtype, _ in gaps}
    True
    """
    gaps = []
    with quiet():
        for name, make, shape in _initializer_cases():
            try:
                make()(shape, dtype="float32")
            except Exception:
                continue  # not a dtype gap
            for dtype in dtypes:
                try:
                    got = _dtype(make()(shape, dtype=dtype))
                    error = "" if got == dtype else f"returns {got}"
                except Exception as e:
                    error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
                if error:
                    gaps.append((name, dtype, error))
    return gaps


def _probe_half_initializers() -> bool:
    # The gap `initializer_gaps()` finds on every backend; the full survey
    # compiles every initializer in every dtype, too slow for an install.
    for dtype in HALF_DTYPES:
        try:
            keras.initializers.Orthogonal(seed=0)((2, 2), dtype=dtype)
        except Exception:
            return True
    return False


# --------------------------------------------------------------------------
# 2. CategoryEncoding encodes in the variable dtype (and TF has no half bincount).


def _make_category_encode(original: Callable) -> Callable:
    from keras.src.utils import numerical_utils

    def _encode(self, inputs: Any, count_weights: Any = None) -> Any:
        policy = kpe_policy(self)
        if policy is None:
            return original(self, inputs, count_weights)
        backend = self.backend
        compute = policy.compute_dtype
        dtype = compute
        if (
            backend.name == "tensorflow"
            and compute in HALF_DTYPES
            and self.output_mode in ("multi_hot", "count")
        ):
            # TF's (Dense|Sparse)Bincount has no half kernel: count in float32.
            dtype = "float32"
            if count_weights is not None:
                count_weights = backend.cast(count_weights, dtype)
        outputs = numerical_utils.encode_categorical_inputs(
            backend.core.convert_to_tensor(inputs),
            output_mode=self.output_mode,
            depth=self.num_tokens,
            dtype=dtype,
            sparse=self.sparse,
            count_weights=count_weights,
            backend_module=backend,
        )
        if dtype != compute:
            outputs = backend.cast(outputs, compute)
        return outputs

    _encode.__wrapped__ = original
    return _encode


def _probe_category_encoding() -> bool:
    layer = keras.layers.CategoryEncoding(
        3, output_mode="multi_hot", dtype=keras.DTypePolicy("mixed_float16"), name="kpe_probe"
    )
    if _dtype(layer(np.array([[0, 1]], "int32"))) != "float16":
        return True
    for mode in ("multi_hot", "count"):
        layer = keras.layers.CategoryEncoding(
            3, output_mode=mode, dtype=keras.DTypePolicy("bfloat16"), name="kpe_probe"
        )
        try:
            layer(np.array([[0, 1]], "int32"))
        except Exception:
            return True
    return False


# --------------------------------------------------------------------------
# 3. torch: the symbolic (meta-device) value of a variable skips autocast.


def _make_torch_value(original: property) -> property:
    from keras.src.backend.torch.core import to_torch_dtype

    fget = original.fget

    def value(self):
        value = fget(self)
        if value.is_meta and self._autocast:
            scope = get_autocast_scope()
            if scope is not None and scope.dtype is not None and value.is_floating_point():
                target = to_torch_dtype(scope.dtype)
                if value.dtype != target and kpe_policy(_current_layer()) is not None:
                    return value.to(target)
        return value

    return property(value, original.fset, original.fdel, original.__doc__)


class _ProbeMatmul(keras.layers.Layer):
    """`call(x) = ops.matmul(x, w)`: no `compute_output_shape`, so its symbolic
    call traces `call` through the backend."""

    def build(self, input_shape: Any) -> None:
        self.w = self.add_weight(shape=(input_shape[-1], 2), initializer="ones", name="w")

    def call(self, x: Any) -> Any:
        return ops.matmul(x, self.w)


def _probe_torch_symbolic_autocast() -> bool:
    layer = _ProbeMatmul(dtype=keras.DTypePolicy("mixed_bfloat16"), name="kpe_probe")
    eager = _dtype(layer(np.ones((1, 2), "float32")))
    symbolic = _dtype(layer(keras.KerasTensor((1, 2), "float32")))
    return eager != symbolic


# --------------------------------------------------------------------------
# 4. float64 demoted to float32 by Keras's type promotion (torch; JAX with x64).


class _Bit64Map(dict):
    """`BIT64_TO_BIT32_DTYPE` that keeps float64 while a kpe float64 layer runs."""

    __slots__ = ()

    def get(self, key: Any, default: Any = None) -> Any:
        if key == "float64":
            policy = kpe_policy(_current_layer())
            if policy is not None and policy.compute_dtype == "float64":
                return key
        return dict.get(self, key, default)


def _probe_float64_promotion() -> bool:
    if not holds_float64():
        return False  # the backend cannot hold float64 at all: refused instead
    a = ops.ones((2, 2), dtype="float64")
    return any(_dtype(op(a, a)) != "float64" for op in (ops.matmul, ops.logaddexp, ops.arctan2))


# --------------------------------------------------------------------------
# 5. JAX without x64: TF-backed preprocessing layers declare 64-bit outputs.


def _x32_spec(spec: Any) -> Any:
    def canonical(x: Any) -> Any:
        if isinstance(x, keras.KerasTensor) and x.dtype in _JAX_X32:
            return keras.KerasTensor(x.shape, dtype=_JAX_X32[x.dtype], sparse=x.sparse)
        return x

    return keras.tree.map_structure(canonical, spec)


def _make_x32_output_spec(original: Callable) -> Callable:
    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        spec = original(self, *args, **kwargs)
        if kpe_policy(self) is None or holds_float64():
            return spec
        return _x32_spec(spec)

    compute_output_spec.__wrapped__ = original
    return compute_output_spec


def _probe_jax_int64_specs() -> bool:
    # JAX holds int32 for an int64 request, and the layers still declare int64.
    # Their specs are read from stand-ins, so the probe imports no TensorFlow.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _dtype(ops.zeros((), dtype="int64")) == "int64":
            return False
    from keras.src.layers.preprocessing.hashing import Hashing
    from keras.src.layers.preprocessing.index_lookup import IndexLookup

    x = keras.KerasTensor((2, 1), "int64")
    hashing = _StandIn(output_mode="int", dtype="int64")
    lookup = _StandIn(output_mode="int", compute_output_shape=lambda shape: shape)
    return any(
        _dtype(spec) == "int64"
        for spec in (
            Hashing.compute_output_spec(hashing, x),
            IndexLookup.compute_output_spec(lookup, x),
        )
    )


class _StandIn:
    """Attributes a layer's `compute_output_spec` reads, without the layer."""

    def __init__(self, **attributes: Any) -> None:
        vars(self).update(attributes)


# --------------------------------------------------------------------------
# 6. torch: TorchModuleWrapper keeps the module's own parameter dtypes.


def _make_track_module_parameters(original: Callable) -> Callable:
    from keras.src.backend.torch.core import to_torch_dtype

    def _track_module_parameters(self) -> Any:
        policy = kpe_policy(self)
        if (
            policy is not None
            and policy.compute_dtype == policy.variable_dtype
            and keras.backend.is_float_dtype(policy.variable_dtype)
        ):
            # Like every Keras layer's weights, the module's floating parameters
            # and buffers take the policy's dtype (in place, as Keras already
            # moves the module to its device in place).
            self.module.to(dtype=to_torch_dtype(policy.variable_dtype))
        return original(self)

    _track_module_parameters.__wrapped__ = original
    return _track_module_parameters


def _probe_torch_module_wrapper() -> bool:
    from keras.src.backend.torch.core import torch

    layer = keras.layers.TorchModuleWrapper(
        torch.nn.Linear(2, 2), dtype=keras.DTypePolicy("float16"), name="kpe_probe"
    )
    return any(_dtype(v) != "float16" for v in layer.weights)


# --------------------------------------------------------------------------
# 7. IndexLookup encodes one_hot / multi_hot / count in its integer value dtype.

_ENCODED_MODES = ("one_hot", "multi_hot", "count")


def _lookup_is_kpe(layer: Any) -> bool:
    """Whether the lookup answers to a kpe policy: a `TextVectorization`'s own
    lookup (run by `self._lookup_layer.call`) to the `TextVectorization`'s policy,
    any other lookup to its own."""
    caller = _current_layer()
    if getattr(caller, "_lookup_layer", None) is layer:
        return kpe_policy(caller) is not None
    return kpe_policy(layer) is not None


def _make_lookup_call(original: Callable) -> Callable:
    def call(self, inputs: Any) -> Any:
        outputs = original(self, inputs)
        if self.output_mode in _ENCODED_MODES and _lookup_is_kpe(self):
            from keras.src.backend import tensorflow as tf_backend  # as IndexLookup.call

            declared = keras.config.floatx()  # what compute_output_spec declares
            if _dtype(outputs) != declared:
                outputs = tf_backend.core.cast(outputs, declared)
        return outputs

    call.__wrapped__ = original
    return call


def _probe_lookup_encoded_dtype() -> bool:
    # The spec is read from a stand-in (no TensorFlow import): while Keras declares
    # a floating dtype for the encoded modes, the patch casts the integer encoding
    # to it (a no-op once Keras encodes in that dtype). Were Keras to declare the
    # integer dtype instead, the probe turns false and nothing is patched.
    from keras.src.layers.preprocessing.index_lookup import IndexLookup

    lookup = _StandIn(output_mode="multi_hot", compute_output_shape=lambda shape: shape)
    spec = IndexLookup.compute_output_spec(lookup, keras.KerasTensor((2, 3), "int64"))
    return keras.backend.is_float_dtype(_dtype(spec))


# --------------------------------------------------------------------------
# 8. JAX, torch: HashedCrossing casts its compute-dtype encoding to the variable dtype.


def _make_hashed_crossing_call(original: Callable) -> Callable:
    def call(self, inputs: Any) -> Any:
        outputs = original(self, inputs)
        policy = kpe_policy(self)
        if (
            policy is not None
            and keras.backend.is_float_dtype(policy.compute_dtype)
            and ops.is_tensor(outputs)  # a backend tensor, not a tf.data graph tensor
            and _dtype(outputs) != policy.compute_dtype
            and get("hashed_crossing_dtype").probe()  # run here: it needs TensorFlow
        ):
            # `call` encoded in the compute dtype, then converted to the variable
            # dtype: this restores the encoding exactly.
            outputs = ops.cast(outputs, policy.compute_dtype)
        return outputs

    call.__wrapped__ = original
    return call


def _probe_hashed_crossing() -> bool:
    if importlib.util.find_spec("tensorflow") is None:
        return False  # HashedCrossing runs on TensorFlow: without it, it cannot run at all
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = keras.layers.HashedCrossing(
            3, output_mode="one_hot", dtype=keras.DTypePolicy(policy), name="kpe_probe"
        )
        if _dtype(layer([np.array([1, 2]), np.array([3, 4])])) != layer.compute_dtype:
            return True
    return False


# --------------------------------------------------------------------------
# 9. bfloat16 3-D convolutions on the CPU: a wrong kernel gradient (oneDNN).


def _on_cpu(x: Any) -> bool:
    """Whether tensor `x` lives on the CPU (a torch device, or TensorFlow's device string)."""
    device = getattr(x, "device", None)
    kind = getattr(device, "type", None)
    if kind is not None:
        return kind == "cpu"
    if device:
        return "CPU" in str(device).upper()
    return not any(d.lower().startswith("gpu") for d in keras.distribution.list_devices())


def _channels_last(args: tuple, kwargs: dict) -> bool:
    from keras.src.backend import standardize_data_format

    data_format = kwargs.get("data_format", args[2] if len(args) > 2 else None)
    return standardize_data_format(data_format) == "channels_last"


def _make_conv(original: Callable) -> Callable:
    def conv(inputs: Any, kernel: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            len(getattr(inputs, "shape", ())) == 5
            and _dtype(inputs) == "bfloat16"
            and _channels_last(args, kwargs)
            and kpe_policy(_current_layer()) is not None
            and _on_cpu(inputs)
        ):
            inputs, kernel = ops.cast(inputs, "float32"), ops.cast(kernel, "float32")
            return ops.cast(original(inputs, kernel, *args, **kwargs), "bfloat16")
        return original(inputs, kernel, *args, **kwargs)

    return conv


def _probe_conv3d_bf16_gradient() -> bool:
    rng = np.random.default_rng(0)
    x, target = (rng.normal(size=(2, 2, 2, 2, 2)).astype("float32") for _ in range(2))
    kernel = (0.2 * rng.normal(size=(3, 3, 3, 2, 2))).astype("float32")

    def update(policy: str) -> np.ndarray:
        layer = keras.layers.Conv3D(
            2, 3, padding="same", use_bias=False, dtype=keras.DTypePolicy(policy),
            name="kpe_probe",
        )  # fmt: skip
        inputs = keras.Input(batch_shape=x.shape)
        model = keras.Model(inputs, layer(inputs))
        layer.set_weights([kernel])
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", run_eagerly=True)
        model.train_on_batch(x, target)
        return ops.convert_to_numpy(layer.kernel).astype("float32") - kernel

    expected, seen = update("float32"), update("mixed_bfloat16")
    error = np.max(np.abs(seen - expected)) / np.max(np.abs(expected))
    return not error <= 0.08  # bfloat16's tolerance in kpe's check; NaN is a defect


# 10. JAX: LossScaleOptimizer.apply assigns its variables inside ops.cond (keras#19244).


def apply_loss_scale_without_cond(
    optimizer: keras.optimizers.LossScaleOptimizer, grads: Any, trainable_variables: Any = None
) -> None:
    """Keras's `LossScaleOptimizer.apply`, with no variable assigned inside `ops.cond`.

    kpe's `LossScaleOptimizer.apply` runs this while the `loss_scale_apply_eager`
    fix's probe finds Keras's own `apply` failing in an eager loop (JAX). The
    same step, branch-free: the inner optimizer applies the unscaled
    gradients, then every variable it may have changed (the trainable ones
    and its own) takes `where(finite, new, old)`, so a non-finite step leaves
    no trace, as Keras's skipped branch does; the scale and step counter
    follow Keras's rule through `ops.where`. JAX arrays are immutable, so the
    old values stay valid.
    """
    if not optimizer.built:
        with keras.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(trainable_variables)
        optimizer.built = True
    variables = list(trainable_variables or optimizer_trainable_variables(optimizer))
    finite = optimizer.check_finite(grads)
    scale = optimizer.dynamic_scale.value
    unscaled = [
        g if g is None or overwrites_with_gradient(optimizer, v) else ops.divide(g, scale)
        for g, v in zip(grads, variables)
    ]
    touched = variables + list(optimizer.inner_optimizer.variables)
    before = [v.value for v in touched]
    optimizer.inner_optimizer.apply(unscaled, trainable_variables=trainable_variables)
    for variable, old in zip(touched, before):
        variable.assign(ops.where(finite, variable.value, old))
    grow = ops.logical_and(
        finite, ops.equal(optimizer.step_counter.value, optimizer.dynamic_growth_steps - 1)
    )
    optimizer.dynamic_scale.assign(
        ops.where(
            finite, ops.where(grow, ops.multiply(scale, 2.0), scale), ops.multiply(scale, 0.5)
        )
    )
    counter = optimizer.step_counter.value
    optimizer.step_counter.assign(
        ops.where(ops.logical_and(finite, ops.logical_not(grow)), counter + 1, 0)
    )


def _probe_loss_scale_apply() -> bool:
    # A throwaway optimizer with explicit names; any failure means: do not rely
    # on Keras's apply.
    probe = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(name="kpe_probe_sgd"), name="kpe_probe_loss_scale_optimizer"
    )
    variable = keras.Variable(np.ones(1, "float32"), name="kpe_probe_variable")
    try:
        for grad in (1.0, np.inf):
            probe.apply([ops.convert_to_tensor(np.array([grad], "float32"))], [variable])
        ops.convert_to_numpy(variable.value)
        ops.convert_to_numpy(probe.dynamic_scale.value)
    except Exception:
        return True
    return False


# --------------------------------------------------------------------------
# The table.

_LAYER = "keras.src.layers.layer.Layer"
_PREPROCESSING = "keras.src.layers.preprocessing"

FIXES: tuple[Fix, ...] = (
    Fix(
        "half_precision_initializers",
        issue=(
            "keras-team/keras#16970 (Orthogonal and Identity initializers fail in "
            "half precision; closed without a fix)"
        ),
        defect=(
            "Variables are initialized by calling the initializer in the variable "
            "dtype; the Orthogonal initializer's QR has no float16/bfloat16 kernel on "
            "JAX CPU and torch CPU, nor bfloat16 on TensorFlow, so every recurrent "
            "layer (SimpleRNN, LSTM, GRU, their Bidirectional wrappers, ConvLSTM1D/2D/"
            "3D) fails to build under float16/bfloat16 policies."
        ),
        cause=(
            "keras/src/backend/common/variables.py Variable._initialize_with_initializer "
            "(line 416-420; TF: backend/tensorflow/core.py:52-53) calls "
            "initializer(shape, dtype=self._dtype); "
            "keras/src/initializers/random_initializers.py Orthogonal.__call__ "
            "(line 747) runs ops.qr (line 766) in that dtype."
        ),
        backends=("jax", "torch", "tensorflow"),
        probe=_probe_half_initializers,
        targets=(
            Target(
                _LAYER, "add_weight", _make_add_weight, ("self", "shape=", "initializer=", "dtype=")
            ),
        ),
    ),
    Fix(
        "category_encoding_dtype",
        issue="no upstream issue found",
        defect=(
            "CategoryEncoding encodes in its variable dtype (`self.dtype`) but declares "
            "its compute dtype: under mixed policies the eager output is float32 and "
            "the KerasTensor float16/bfloat16. On TensorFlow, 'count' and 'multi_hot' "
            "under float16/bfloat16 raise (DenseBincount has no half kernel)."
        ),
        cause=(
            "keras/src/layers/preprocessing/category_encoding.py CategoryEncoding._encode "
            "(line 117-127, dtype=self.dtype at line 123) vs compute_output_spec "
            "(line 141-145, dtype=self.compute_dtype); TF: "
            "keras/src/utils/numerical_utils.py encode_categorical_inputs (line 138-154) "
            "-> keras/src/utils/tf_utils.py dense_bincount/sparse_bincount (tf.math.bincount)."
        ),
        backends=("jax", "torch", "tensorflow"),
        probe=_probe_category_encoding,
        targets=(
            Target(
                f"{_PREPROCESSING}.category_encoding.CategoryEncoding",
                "_encode",
                _make_category_encode,
                ("self", "inputs", "count_weights"),
            ),
        ),
    ),
    Fix(
        "torch_symbolic_autocast",
        issue="no upstream issue found",
        defect=(
            "torch: in a symbolic call (functional API), a layer whose call reads its "
            "variables (ops.matmul(x, self.w)) under a mixed policy sees them in their "
            "variable dtype (float32), not the compute dtype: the KerasTensor is float32 "
            "while the eager output is float16/bfloat16."
        ),
        cause=(
            "keras/src/backend/torch/core.py Variable.value (line 142-174): in the meta-"
            "device trace of compute_output_spec (line 313) its helper "
            "maybe_use_symbolic_tensor (line 145-156) replaces the autocast value by a "
            "fresh meta Parameter of dtype=to_torch_dtype(self._dtype) (line 151), "
            "dropping AutocastScope's cast."
        ),
        backends=("torch",),
        probe=_probe_torch_symbolic_autocast,
        targets=(
            Target("keras.src.backend.torch.core.Variable", "value", _make_torch_value, property),
        ),
    ),
    Fix(
        "float64_promotion",
        issue="keras-team/keras#23223, keras-team/keras#23704",
        defect=(
            "Keras's type promotion demotes float64 to float32 on every backend but "
            "TensorFlow, so ops that cast to it (torch: matmul, hence Attention and "
            "any ops.matmul layer; JAX with x64: logaddexp, arctan2) return float32 "
            "from float64 inputs under float64 policies."
        ),
        cause=(
            "keras/src/backend/common/dtypes.py _lattice_result_type (line 274-276) maps "
            "through BIT64_TO_BIT32_DTYPE (line 235-242: float64 -> float32 except on "
            "TensorFlow); keras/src/backend/torch/numpy.py matmul (line 141, 156) casts "
            "its product to that result type."
        ),
        backends=("torch", "jax"),
        probe=_probe_float64_promotion,
        targets=(
            Target("keras.src.backend.common.dtypes", "BIT64_TO_BIT32_DTYPE", _Bit64Map, dict),
        ),
    ),
    Fix(
        "jax_int64_specs",
        issue="no upstream issue found",
        defect=(
            "JAX without x64: the TF-backed preprocessing layers Hashing, "
            "HashedCrossing, IntegerLookup, StringLookup and TextVectorization declare "
            "int64 KerasTensors ('int' output) but return int32 eagerly (JAX truncates "
            "64-bit dtypes)."
        ),
        cause=(
            "keras/src/layers/preprocessing/hashing.py compute_output_spec (line 277-286), "
            "index_lookup.py compute_output_spec (line 637-643), text_vectorization.py "
            "compute_output_spec (line 385-391), HashedCrossing via "
            "keras/src/layers/layer.py Layer.compute_output_spec (line 1241) declare "
            "int64; keras/src/utils/backend_utils.py convert_tf_tensor (line 24-27) turns "
            "the TF int64 result into a jax int32 array."
        ),
        backends=("jax",),
        probe=_probe_jax_int64_specs,
        targets=tuple(
            Target(owner, "compute_output_spec", _make_x32_output_spec, ("self",))
            for owner in (
                f"{_PREPROCESSING}.hashing.Hashing",
                f"{_PREPROCESSING}.hashed_crossing.HashedCrossing",
                f"{_PREPROCESSING}.index_lookup.IndexLookup",
                f"{_PREPROCESSING}.text_vectorization.TextVectorization",
            )
        ),
    ),
    Fix(
        "torch_module_wrapper_dtype",
        issue=(
            "keras-team/keras#20726 (mixed precision not working with "
            "TorchModuleWrapper; closed, stale)"
        ),
        defect=(
            "torch: TorchModuleWrapper wraps the module's parameters in the dtype the "
            "module has, whatever the policy: under float16/bfloat16/float64 policies "
            "its variables are float32 and the call fails ('mat1 and mat2 must have "
            "the same dtype')."
        ),
        cause=(
            "keras/src/utils/torch_utils.py TorchModuleWrapper.__init__ (line 87-105) and "
            "_track_module_parameters (line 110-118) wrap each parameter as it is; call "
            "(line 120) runs the module unchanged on inputs Layer.__call__ cast to the "
            "compute dtype."
        ),
        backends=("torch",),
        probe=_probe_torch_module_wrapper,
        targets=(
            Target(
                "keras.src.utils.torch_utils.TorchModuleWrapper",
                "_track_module_parameters",
                _make_track_module_parameters,
                ("self",),
            ),
        ),
    ),
    Fix(
        "lookup_encoded_dtype",
        issue="no upstream issue found",
        defect=(
            "IntegerLookup and StringLookup (output_mode 'one_hot', 'multi_hot', "
            "'count') and TextVectorization ('multi_hot', 'count') return int64 "
            "(int32 on JAX) eagerly but declare floatx() (float32) KerasTensors, on "
            "every backend."
        ),
        cause=(
            "keras/src/layers/preprocessing/index_lookup.py IndexLookup.call (line "
            "785-842) encodes with dtype=self._value_dtype (int64, line 829) while "
            "compute_output_spec (line 637-643) and text_vectorization.py "
            "compute_output_spec (line 385-391) declare backend.floatx()."
        ),
        backends=("jax", "torch", "tensorflow"),
        probe=_probe_lookup_encoded_dtype,
        targets=(
            Target(
                f"{_PREPROCESSING}.index_lookup.IndexLookup",
                "call",
                _make_lookup_call,
                ("self", "inputs"),
            ),
        ),
    ),
    Fix(
        "hashed_crossing_dtype",
        issue="no upstream issue found",
        defect=(
            "HashedCrossing ('one_hot' output) under mixed policies returns float32 "
            "(the variable dtype) eagerly while its KerasTensor has the compute dtype: "
            "on JAX under both mixed policies, on torch under mixed_float16."
        ),
        cause=(
            "keras/src/layers/preprocessing/hashed_crossing.py HashedCrossing.call "
            "encodes with dtype=self.compute_dtype (line 175), then "
            "backend_utils.convert_tf_tensor(outputs, dtype=self.dtype) (line 178) "
            "converts to the variable dtype where the backend's convert_to_tensor "
            "applies it (JAX; torch for float16, not for bfloat16; not TensorFlow)."
        ),
        backends=("jax", "torch"),
        probe=_probe_hashed_crossing,
        probe_on_call=True,
        targets=(
            Target(
                f"{_PREPROCESSING}.hashed_crossing.HashedCrossing",
                "call",
                _make_hashed_crossing_call,
                ("self", "inputs"),
            ),
        ),
    ),
    Fix(
        "conv3d_bf16_weight_gradient",
        issue=(
            "no upstream issue found (oneDNN's jit_bf16:avx512_core_bf16 backward-weights "
            "primitive for 3-D convolution)"
        ),
        defect=(
            "On a CPU with AVX-512 bf16, a bfloat16 3-D convolution (Conv3D, ConvLSTM3D) "
            "in channels-last layout whose input is shallower than the kernel, with "
            "padding, gets a wrong kernel gradient on practically every call and NaN/Inf "
            "on some: torch (oneDNN 3.12) and TensorFlow (oneDNN on, its default) select "
            "the defective kernel; JAX is right. Forward outputs and input gradients are "
            "right, so training silently goes wrong."
        ),
        cause=(
            "oneDNN's bfloat16 backward-weights kernel for 3-D convolution, channels-last "
            "(torch: Keras forces that layout, keras/src/backend/torch/nn.py conv -> "
            "_maybe_convert_to_channels_last; TensorFlow: NDHWC is its CPU layout). kpe "
            "runs such a convolution in float32 and casts its result to bfloat16."
        ),
        backends=("torch", "tensorflow"),
        probe=_probe_conv3d_bf16_gradient,
        targets=(
            Target(
                "keras.src.backend.nn",
                "conv",
                _make_conv,
                ("inputs", "kernel", "strides", "padding", "data_format"),
            ),
        ),
    ),
    Fix(
        "loss_scale_apply_eager",
        issue="keras-team/keras#19244",
        defect=(
            "JAX: LossScaleOptimizer.apply in an eager loop (a custom training loop "
            "calling optimizer.apply) raises UnexpectedTracerError."
        ),
        cause=(
            "keras/src/optimizers/loss_scale_optimizer.py LossScaleOptimizer._common_apply "
            "assigns the optimizer's and the model's variables inside the branches of "
            "ops.cond; on JAX that is lax.cond, which traces both branches, so the "
            "assigned values are leaked tracers."
        ),
        backends=("jax",),
        probe=_probe_loss_scale_apply,
        # No Keras attribute is patched: kpe's own LossScaleOptimizer runs
        # `apply_loss_scale_without_cond` while this probe finds the defect.
        targets=(),
    ),
)

_BY_NAME = {fix.name: fix for fix in FIXES}


def get(name: str) -> Fix:
    """The fix called `name`.

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> keras_fixes.get("float64_promotion").backends
    ('torch', 'jax')
    >>> keras_fixes.get("nope")
    Traceback (most recent call last):
    ...
    ValueError: Unknown fix: name='nope'; valid names: half_precision_initializers, ...
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown fix: name={name!r}; valid names: {', '.join(_BY_NAME)}."
        ) from None


def apply_all(force: bool = False) -> tuple[str, ...]:
    """Applies every fix for the running backend whose probe reproduces its defect.

    With `force=True`, applies every fix for the running backend. Returns the
    names of the fixes applied afterwards (as `applied()`). Idempotent. All
    or nothing: when a fix cannot be applied (a target missing, a signature
    changed, a replacement failing half-way), every fix this call applied is
    reverted and the error raised.

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> "category_encoding_dtype" in keras_fixes.apply_all()
    True
    >>> keras_fixes.revert_all()
    """
    with _lock:
        before = set(applied())
        try:
            for fix in FIXES:
                fix.apply(force=force)
        except BaseException:
            for fix in reversed(FIXES):
                if fix.name not in before:
                    fix.revert()
            raise
    return applied()


def problems() -> list[str]:
    """Each target of a fix for the running backend that this Keras lacks or has
    with another signature (`install()` refuses to patch anything then)."""
    return [problem for fix in FIXES if fix.concerns() for problem in fix.problems()]


def report() -> list[tuple[str, str, str]]:
    """`(fix name, status, detail)` for every fix, in table order (`Fix.status`).

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> [status for _, status, _ in keras_fixes.report()][:2]
    ['skipped', 'skipped']
    """
    return [(fix.name, *fix.status()) for fix in FIXES]


def revert_all() -> None:
    """Reverts every applied fix (idempotent).

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> _ = keras_fixes.apply_all(); keras_fixes.revert_all(); keras_fixes.applied()
    ()
    """
    for fix in reversed(FIXES):
        fix.revert()


def applied() -> tuple[str, ...]:
    """Names of the fixes in place, in table order.

    >>> from keras_policy_ext.internals import fixes as keras_fixes
    >>> keras_fixes.applied()
    ()
    """
    return tuple(fix.name for fix in FIXES if fix.applied)


# --------------------------------------------------------------------------
# Refusals: what a backend cannot honour.


def refusal(layer: Any, policy: Any = None, name: str | None = None) -> str | None:
    """Why `layer` must be refused under the kpe `policy` on this backend, else `None`.

    `policy` defaults to the layer's own, `name` to the layer's (Keras 3.10 and
    older resolve a layer's policy before they set its name). Only kpe policies are judged (Keras's
    own policies keep Keras's behaviour: `None`). The message names the
    backend, the cause and the fix. Call it once the layer's `__init__` has
    run; a cause that depends on an attribute the layer has not set yet is
    not judged.

    Refused: any layer under a policy with float64 on JAX without x64 (its
    float64 variables would hold float32); a `TorchModuleWrapper` under a
    mixed policy (Keras never casts the wrapped module's parameters to the
    compute dtype); `CategoryEncoding` counts under float16/bfloat16 on
    TensorFlow while the `category_encoding_dtype` fix is not applied.

    >>> import keras, keras_policy_ext as kpe
    >>> from keras_policy_ext.internals.fixes import refusal
    >>> refusal(keras.layers.Dense(2), kpe.DTypePolicy("mixed_bfloat16")) is None
    True
    >>> reason = refusal(keras.layers.Dense(2, dtype=kpe.DTypePolicy("float64")))
    >>> reason is None or "JAX_ENABLE_X64=1" in reason  # refused on JAX without x64
    True
    """
    policy = kpe_policy(layer) if policy is None else policy
    if not is_kpe_policy(policy):
        return None
    backend = keras.backend.backend()
    name = getattr(layer, "name", "?") if name is None else name
    what = f"{type(layer).__name__} {name!r} under policy {policy.name!r}"
    head = f"keras_policy_ext refuses {what} on the {backend} backend: "
    unholdable = cannot_hold({policy.compute_dtype, policy.variable_dtype}, backend)
    if unholdable is not None:
        return head + unholdable
    if (
        backend == "torch"
        and isinstance(layer, keras.layers.TorchModuleWrapper)
        and policy.compute_dtype != policy.variable_dtype
    ):
        return head + (
            "Keras runs the wrapped torch.nn.Module as it is: its parameters stay in the "
            f"variable dtype ({policy.variable_dtype}) while its inputs are cast to the "
            f"compute dtype ({policy.compute_dtype}), so its matmuls fail ('mat1 and mat2 "
            "must have the same dtype'). Fix: give the wrapper a single-dtype policy "
            f"(dtype={policy.compute_dtype!r}, which converts the module to it, or "
            "'float32')."
        )
    if (
        backend == "tensorflow"
        and isinstance(layer, keras.layers.CategoryEncoding)
        and getattr(layer, "output_mode", None) in ("multi_hot", "count")
        and policy.compute_dtype in HALF_DTYPES
        and not get("category_encoding_dtype").applied
        and get("category_encoding_dtype").probe()
    ):
        return head + (
            f"TensorFlow's bincount has no {policy.compute_dtype} kernel, so "
            f"output_mode={layer.output_mode!r} raises. Fix: install kpe's plugin "
            "(kpe.install(), which applies kpe's fixes: this one counts in float32 and "
            "casts), or use a float32 policy for this layer."
        )
    return None
