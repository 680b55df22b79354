"""The `DTypePolicy` value object: name parsing, dtypes, input conversion."""

from __future__ import annotations

import operator
from typing import Any

import keras
from keras import ops

from keras_policy_ext import internals, roles
from keras_policy_ext._state import STATE

# Policy names that are not a single dtype: name -> (compute, variable).
MIXED_POLICIES = {
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
}
# The dtype names Keras accepts as a policy name (plus "int", its alias for
# the backend's default integer); each is both compute and variable dtype.
DTYPE_NAMES = (
    "float16", "bfloat16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2", "string",
)  # fmt: skip
VALID_NAMES = (*MIXED_POLICIES, *DTYPE_NAMES)
# Keras's quantized policy names read "<mode>_from_<source policy>"
# ("int8_from_float32"); those stay Keras's to build.
QUANTIZED_MARK = "_from_"

# What the policy class needs of Keras's internals, checked at import.
internals.check([internals.POLICY_FIELDS_INTERNAL])

# Keras's own `get`, captured before the plugin can replace it: quantized
# policies stay Keras's to build.
_keras_get = keras.dtype_policies.get

# `convert_input` runs on every layer input: the standardized name of a
# dtype object and whether it is floating depend only on that object (and on
# `floatx` for `None`, which is never cached), so they are computed once.
_DTYPE_INFO: dict = {}


def _dtype_info(dtype: Any) -> tuple[str, bool]:
    """`(standardized name, is floating)` of a dtype object, cached."""
    try:
        return _DTYPE_INFO[dtype]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype object
        name = keras.backend.standardize_dtype(dtype)
        info = name, keras.backend.is_float_dtype(name)
        if dtype is not None:
            try:
                _DTYPE_INFO[dtype] = info
            except TypeError:
                pass
        return info


def parse_name(name: Any) -> tuple[str, str, str]:
    """Returns `(name, compute_dtype, variable_dtype)` for a policy name.

    Keras's names keep their spelling; a role-grammar spec
    (`keras_policy_ext.roles`) gets its canonical name. Raises what Keras
    raises for the same name: `TypeError` for a non-string, `ValueError`
    (with Keras's message first) for an unknown one.
    """
    if not isinstance(name, str):
        raise TypeError(
            "'name' must be a string, such as 'mixed_float16'. "
            f"Received: name={name!r} (of type {type(name)})"
        )
    if roles.is_role_spec(name):
        return roles.parse_roles(name)
    if name in MIXED_POLICIES:
        return (name, *MIXED_POLICIES[name])
    try:
        dtype = _dtype_info(name)[0]
    except ValueError:
        hint = (
            " Quantized policies are built by `keras_policy_ext.dtype_policies.get`."
            if QUANTIZED_MARK in name
            else ""
        )
        raise ValueError(
            f"Cannot convert '{name}' to a mixed precision DTypePolicy. "
            "Valid policies include 'mixed_float16', 'mixed_bfloat16', and "
            "the name of any float dtype such as 'float32'. Received: "
            f"name={name!r}; valid names: {', '.join(VALID_NAMES)}, or roles "
            f"such as 'params=float32,compute=bfloat16'.{hint}"
        ) from None
    return name, dtype, dtype


def from_name(name: str) -> keras.DTypePolicy:
    """A kpe policy for a float name, Keras's own for a quantized one."""
    if QUANTIZED_MARK in name:
        return _keras_get(name)
    return DTypePolicy(name)


def as_policy(policy: Any) -> keras.DTypePolicy:
    """`policy` itself if it is a `keras.DTypePolicy`, else the policy a name names.

    >>> from keras_policy_ext.policy import as_policy
    >>> as_policy("mixed_bfloat16")
    <DTypePolicy "mixed_bfloat16">
    >>> as_policy(3)
    Traceback (most recent call last):
    ...
    ValueError: Invalid `policy` argument. Expected the string name of a policy ...
    """
    if isinstance(policy, keras.DTypePolicy):
        return policy
    if isinstance(policy, str):
        return from_name(policy)
    raise ValueError(
        "Invalid `policy` argument. Expected the string name of a policy "
        "(such as 'mixed_float16') or a `DTypePolicy` instance. "
        f"Received: policy={policy!r} (of type {type(policy)})"
    )


def _field(field: str, doc: str) -> property:
    """A read-only property over one of the fields Keras's code reads."""
    return property(operator.attrgetter(field), doc=doc)


@keras.saving.register_keras_serializable(package="keras_policy_ext", name="DTypePolicy")
class DTypePolicy(keras.DTypePolicy):
    """An immutable dtype policy that stock Keras layers accept.

    Equality means "same non-quantized dtypes": a policy equals any
    non-quantized `keras.DTypePolicy`, kpe's or Keras's, with the same
    `compute_dtype` and `variable_dtype`, in either operand order. Policies
    are hashable (consistently with `==`) and picklable; their name and
    dtypes never change, and setting an attribute is an `AttributeError`
    (the one mark a policy object takes is the `kpe.Rules` that made it,
    set once when those rules create it: `kpe.rules.owner_of`).
    `DTypePolicy(str(p)) == p`.

    Args:
        name: a Keras policy name (`"float32"`, `"mixed_float16"`,
            `"mixed_bfloat16"`, any dtype name Keras accepts), or roles as
            jmp writes them (`"params=float32,compute=bfloat16"`,
            `"p=f32,c=bf16"`; see `keras_policy_ext.roles`); `None` takes
            the name of the current `keras_policy_ext.config.dtype_policy()`.

    Raises:
        TypeError: `name` is not a string (nor `None`).
        ValueError: an unknown name, with Keras's message first and the
            valid names after.

    >>> import keras, keras_policy_ext as kpe
    >>> policy = kpe.DTypePolicy("mixed_float16")
    >>> policy
    <DTypePolicy "mixed_float16">
    >>> policy.compute_dtype, policy.variable_dtype
    ('float16', 'float32')
    >>> policy == keras.DTypePolicy("mixed_float16") == kpe.DTypePolicy("p=f32,c=f16")
    True
    >>> kpe.DTypePolicy("params=float64,compute=float32")
    <DTypePolicy "params=float64,compute=float32">
    >>> keras.layers.Dense(4, dtype=policy).dtype_policy is policy
    True
    """

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            in_force = STATE.in_force()
            name = in_force.name if in_force is not None else keras.config.floatx()
        internals.set_policy_fields(self, *parse_name(name))

    name = _field(
        "_name",
        """The policy's name: Keras's spelling, or a role spec's canonical name.

        >>> import keras_policy_ext as kpe
        >>> kpe.DTypePolicy("p=f32,c=bf16").name, kpe.DTypePolicy("p=bf16,c=f32").name
        ('mixed_bfloat16', 'params=bfloat16,compute=float32')
        """,
    )
    compute_dtype = _field(
        "_compute_dtype",
        """The dtype layers compute in, and that their outputs have.

        >>> import keras, keras_policy_ext as kpe
        >>> layer = keras.layers.Dense(2, dtype=kpe.DTypePolicy("mixed_bfloat16"))
        >>> layer.dtype_policy.compute_dtype == layer.compute_dtype == "bfloat16"
        True
        """,
    )
    variable_dtype = _field(
        "_variable_dtype",
        """The dtype layers create their variables in.

        >>> import keras_policy_ext as kpe
        >>> kpe.DTypePolicy("mixed_bfloat16").variable_dtype
        'float32'
        """,
    )
    quantization_mode = _field(
        "_quantization_mode",
        """Always `None`: kpe policies are not quantized (Keras builds quantized ones).

        >>> import keras_policy_ext as kpe
        >>> print(kpe.DTypePolicy("float32").quantization_mode)
        None
        """,
    )

    def convert_input(self, x: Any, autocast: bool, dtype: Any) -> Any:
        """Casts a floating input to `dtype` when `autocast` is true.

        Accepts backend tensors, `KerasTensor`s, array-likes (converted to a
        backend tensor, as Keras does) and Python scalars (returned as they
        are). Integer and boolean inputs are never cast; a tensor that needs
        no cast is returned itself.

        Args:
            x: one input of a layer's call.
            autocast: whether the layer casts its inputs (`layer.autocast`).
            dtype: the dtype to cast to (the layer's `input_dtype`).

        Returns:
            `x`, cast to `dtype` when it is floating and `autocast` is true.

        >>> import keras, numpy as np, keras_policy_ext as kpe
        >>> policy = kpe.DTypePolicy("mixed_bfloat16")
        >>> y = policy.convert_input(np.ones(2, "float32"), True, "bfloat16")
        >>> keras.backend.standardize_dtype(y.dtype)
        'bfloat16'
        >>> i = keras.ops.ones(2, dtype="int32")
        >>> policy.convert_input(i, True, "bfloat16") is i
        True
        """
        if ops.is_tensor(x) or keras.backend.is_keras_tensor(x):
            if not autocast:
                return x
        elif hasattr(x, "__array__"):
            try:
                x = ops.convert_to_tensor(x)
            except TypeError:
                x = ops.convert_to_tensor(x, dtype=_dtype_info(dtype)[0])
            if not autocast:
                return x
        else:
            return x
        x_dtype, x_is_float = _dtype_info(x.dtype)
        dtype = _dtype_info(dtype)[0]
        if x_is_float and x_dtype != dtype:
            return ops.cast(x, dtype)
        return x

    def get_config(self) -> dict:
        """The policy's config: `{"name": name}`.

        >>> import keras_policy_ext as kpe
        >>> config = kpe.DTypePolicy("float16").get_config()
        >>> config
        {'name': 'float16'}
        >>> kpe.DTypePolicy.from_config(config)
        <DTypePolicy "float16">
        """
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> DTypePolicy:
        """Builds a policy from `get_config()`'s output (see `get_config`)."""
        return cls(**config)

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self.name}">'

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, keras.DTypePolicy) or isinstance(
            other, keras.dtype_policies.DTypePolicyMap
        ):
            return NotImplemented
        return (
            other.quantization_mode is None
            and self.compute_dtype == other.compute_dtype
            and self.variable_dtype == other.variable_dtype
        )

    def __hash__(self) -> int:
        return hash((DTypePolicy, self.compute_dtype, self.variable_dtype))

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(
            f"{self!r} is immutable: cannot set {attr!r}. Build a new policy instead."
        )

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"{self!r} is immutable: cannot delete {attr!r}.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.name,))

    def __copy__(self) -> DTypePolicy:
        return self

    def __deepcopy__(self, memo: dict) -> DTypePolicy:
        return self


FloatDTypePolicy = DTypePolicy
