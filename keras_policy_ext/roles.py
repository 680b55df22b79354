"""The role grammar of DeepMind's jmp: `"params=float32,compute=bfloat16"`.

Read as jmp's `get_policy` reads it (jmp/_src/policy.py): keys `params` (or
`p`), the variable dtype, `compute` (or `c`) and `output` (or `o`); a missing
`params` is float32, a missing `compute` follows `params`, a missing `output`
follows `compute`; a name without `=` that is one of the short forms below is
that dtype for every role. Values: any dtype name Keras accepts, or the short
forms `f16`/`half`, `bf16`, `f32`/`full`, `f64` (jmp's), and `float`/`single`,
`double` (kpe's own). A spec whose dtypes have a Keras name is named by it.

Where kpe differs from jmp: a kpe policy has no output dtype of its own (a
layer's outputs are its compute dtype), so `output` must equal the compute
dtype, or the spec is a `ValueError` (kpe's float32 outputs are
`kpe.with_float32_outputs`); `half` is float16 on every device (jmp picks
bfloat16 on a TPU); a key given twice is an error (jmp keeps the last).

>>> from keras_policy_ext.roles import parse_roles
>>> parse_roles("p=f32,c=bf16")
('mixed_bfloat16', 'bfloat16', 'float32')
>>> parse_roles("c=bf16")  # params default to float32, as in jmp
('mixed_bfloat16', 'bfloat16', 'float32')
>>> parse_roles("params=float64, compute=float32, output=float32")
('params=float64,compute=float32', 'float32', 'float64')
>>> parse_roles("half")
('float16', 'float16', 'float16')
"""

from __future__ import annotations

ROLE_KEYS = {
    "params": "params", "p": "params",
    "compute": "compute", "c": "compute",
    "output": "output", "o": "output",
}  # fmt: skip
DTYPE_ALIASES = {
    "f16": "float16", "half": "float16",
    "bf16": "bfloat16",
    "f32": "float32", "full": "float32", "float": "float32", "single": "float32",
    "f64": "float64", "double": "float64",
}  # fmt: skip
# Keras's names for (compute, variable) pairs that are not one dtype.
KERAS_NAMES = {("float16", "float32"): "mixed_float16", ("bfloat16", "float32"): "mixed_bfloat16"}


def is_role_spec(name: str) -> bool:
    """Whether `name` is written in the role grammar: it has a `=`, or is a short form.

    Keras's own names (`"float16"`, `"mixed_bfloat16"`, ...) are not: none of
    the short forms is a name Keras accepts.

    Args:
        name: a policy name.

    Returns:
        `True` for a role spec (`"c=bf16"`, `"half"`), `False` otherwise.

    >>> from keras_policy_ext.roles import is_role_spec
    >>> is_role_spec("c=bf16"), is_role_spec("half"), is_role_spec("float16")
    (True, True, False)
    """
    return "=" in name or name in DTYPE_ALIASES


def _dtype(spec: str, key: str, value: str) -> str:
    import keras  # here: the grammar's names are read without Keras (the command's options)

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
    """Keras's name for the dtypes if it has one, else the long role form.

    Args:
        compute: the compute dtype's name.
        variable: the variable dtype's name.

    Returns:
        The policy's canonical name, as `kpe.DTypePolicy` spells it.

    >>> from keras_policy_ext.roles import canonical_name
    >>> canonical_name("bfloat16", "float32"), canonical_name("float32", "float64")
    ('mixed_bfloat16', 'params=float64,compute=float32')
    """
    if compute == variable:
        return compute
    return KERAS_NAMES.get((compute, variable), f"params={variable},compute={compute}")


def parse_roles(spec: str) -> tuple[str, str, str]:
    """Parses a role spec, as jmp's `get_policy` reads it (see the module).

    Args:
        spec: a role spec: `"params=float32,compute=bfloat16"`, `"c=bf16"`,
            or a short form alone (`"half"`).

    Returns:
        `(canonical name, compute dtype, variable dtype)`.

    Raises:
        ValueError: a bad key, a bad dtype, a key given twice, or an output
            dtype other than the compute dtype; the message names the part.

    >>> from keras_policy_ext.roles import parse_roles
    >>> parse_roles("p=bf16,c=f32")
    ('params=bfloat16,compute=float32', 'float32', 'bfloat16')
    """
    if "=" not in spec:
        dtype = _dtype(spec, "every role", spec)
        return canonical_name(dtype, dtype), dtype, dtype
    roles: dict[str, tuple[str, str]] = {}
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
        roles[role] = (key, _dtype(spec, key, value))
    variable = roles["params"][1] if "params" in roles else "float32"
    compute = roles["compute"][1] if "compute" in roles else variable
    if "output" in roles and roles["output"][1] != compute:
        key, output = roles["output"]
        raise ValueError(
            f"Cannot parse policy {spec!r}: output {output!r} (key {key!r}) differs from "
            f"compute {compute!r}; a kpe policy's outputs are its compute dtype, so the "
            "output may only repeat it. For float32 outputs of a lower-precision model, "
            "use `kpe.with_float32_outputs(model)` or a float32 last layer."
        )
    return canonical_name(compute, variable), compute, variable
