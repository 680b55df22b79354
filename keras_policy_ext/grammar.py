"""The role grammar: `"params=float32,compute=bfloat16"`, as jmp users know it.

Keys: `params` (or `p`), the variable dtype, and `compute` (or `c`). Values:
any dtype name Keras accepts, or the short forms `f16`/`half`, `bf16`,
`f32`/`float`/`single`, `f64`/`double`. A missing role takes the other's
dtype. A spec whose dtypes have a Keras name is named by it.

>>> from keras_policy_ext.grammar import parse_roles
>>> parse_roles("p=f32,c=bf16")
('mixed_bfloat16', 'bfloat16', 'float32')
>>> parse_roles("params=float64, compute=float32")
('params=float64,compute=float32', 'float32', 'float64')
"""

from __future__ import annotations

import keras

ROLE_KEYS = {"params": "params", "p": "params", "compute": "compute", "c": "compute"}
DTYPE_ALIASES = {
    "f16": "float16", "half": "float16",
    "bf16": "bfloat16",
    "f32": "float32", "float": "float32", "single": "float32",
    "f64": "float64", "double": "float64",
}  # fmt: skip
# Keras's names for (compute, variable) pairs that are not one dtype.
KERAS_NAMES = {("float16", "float32"): "mixed_float16", ("bfloat16", "float32"): "mixed_bfloat16"}


def is_role_spec(name: str) -> bool:
    """Whether `name` is written in the role grammar (it has a `=`)."""
    return "=" in name


def _dtype(spec: str, key: str, value: str) -> str:
    value = DTYPE_ALIASES.get(value, value)
    try:
        return keras.backend.standardize_dtype(value)
    except ValueError:
        raise ValueError(
            f"Cannot parse policy {spec!r}: bad dtype {value!r} for {key!r}; "
            f"valid values are dtype names such as 'float32' and the short "
            f"forms {', '.join(DTYPE_ALIASES)}."
        ) from None


def canonical_name(compute: str, variable: str) -> str:
    """Keras's name for the dtypes if it has one, else the long role form."""
    if compute == variable:
        return compute
    return KERAS_NAMES.get((compute, variable), f"params={variable},compute={compute}")


def parse_roles(spec: str) -> tuple[str, str, str]:
    """`(canonical name, compute dtype, variable dtype)` of a role spec."""
    roles: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        role = ROLE_KEYS.get(key)
        if not sep or role is None:
            raise ValueError(
                f"Cannot parse policy {spec!r}: bad key {key!r} in {part.strip()!r}; "
                f"valid keys are {', '.join(ROLE_KEYS)} (written key=dtype, "
                "comma-separated)."
            )
        if role in roles:
            raise ValueError(f"Cannot parse policy {spec!r}: {key!r} is given twice.")
        roles[role] = _dtype(spec, key, value)
    variable = roles.get("params", roles.get("compute"))
    compute = roles.get("compute", variable)
    return canonical_name(compute, variable), compute, variable
