"""`validate`: what a backend cannot do with a policy, known before training."""

from __future__ import annotations

from typing import Any, NamedTuple

import keras

from keras_policy_ext import dtype_policies
from keras_policy_ext.backends import BACKENDS
from keras_policy_ext.internals import fixes

_FLOAT8 = ("float8_e4m3fn", "float8_e5m2")


class Validation(NamedTuple):
    """`validate`'s answer: `ok`, and why not when it is not.

    Attributes:
        ok: whether the backend can honour the policy.
        reason: why not, naming the policy, the backend and the remedy;
            empty when `ok`.

    >>> import keras_policy_ext as kpe
    >>> ok, reason = kpe.validate("float8_e4m3fn")
    >>> ok, reason.split(":")[0]
    (False, "'float8_e4m3fn'")
    """

    ok: bool
    reason: str


class PolicyRefusedError(ValueError):
    """A layer refused under a kpe policy its backend cannot honour.

    Raised, with the plugin installed, when a layer is built under a kpe
    policy the running backend would silently break: float64 on JAX without
    x64 (its float64 variables would hold float32), a `TorchModuleWrapper`
    under a mixed policy on torch. The message names the backend, the cause
    and the fix. A `ValueError`, as Keras raises for a dtype it rejects.

    >>> import keras, keras_policy_ext as kpe
    >>> refused = not kpe.validate("float64").ok  # JAX without x64
    >>> try:
    ...     with kpe.installed():
    ...         _ = keras.layers.Dense(2, dtype="float64")
    ...     outcome = "built"
    ... except kpe.PolicyRefusedError as e:
    ...     outcome = "refused" if "JAX_ENABLE_X64=1" in str(e) else str(e)
    >>> outcome == ("refused" if refused else "built")
    True
    """


def validate(policy: Any, backend: str | None = None) -> Validation:
    """Says whether `backend` (default: the running one) can honour `policy`.

    Float policies are checked: float64 on JAX needs x64 enabled
    (`JAX_ENABLE_X64=1`), or its float64 variables silently hold float32;
    float8 is no compute dtype; a non-floating compute dtype cannot run
    float layers. Quantized policies are Keras's and pass.

    Args:
        policy: a policy or its name.
        backend: `"jax"`, `"torch"` or `"tensorflow"`; `None` for the
            running one. For JAX from another backend's process, x64 is read
            from `JAX_ENABLE_X64` as JAX reads it.

    Returns:
        A `Validation`: `(ok, reason)`, `reason` empty when `ok`.

    Raises:
        ValueError: an unknown backend, or an unknown policy name.

    >>> import keras, keras_policy_ext as kpe
    >>> kpe.validate("mixed_bfloat16")
    Validation(ok=True, reason='')
    >>> kpe.validate("float64", backend="jax")  # with JAX_ENABLE_X64 unset
    Validation(ok=False, reason="'float64' on jax: x64 is disabled, ...")
    """
    backend = keras.backend.backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(
            f"Unknown backend: backend={backend!r}; valid backends: {', '.join(BACKENDS)}."
        )
    policy = dtype_policies.get(policy)
    if policy.quantization_mode is not None:
        return Validation(True, "")
    # What the backend can hold is decided in one place, which the plugin's
    # refusals ask too.
    unholdable = fixes.cannot_hold({policy.compute_dtype, policy.variable_dtype}, backend)
    if unholdable is not None:
        return Validation(False, f"{policy.name!r} on {backend}: {unholdable}")
    if policy.compute_dtype in _FLOAT8:
        return Validation(
            False,
            f"{policy.name!r}: {policy.compute_dtype} is a storage format, not a "
            "compute dtype; use a float8 quantized policy instead.",
        )
    if not keras.backend.is_float_dtype(policy.compute_dtype):
        return Validation(
            False,
            f"{policy.name!r}: compute dtype {policy.compute_dtype} is not "
            "floating, so layers with float weights cannot compute in it.",
        )
    return Validation(True, "")
