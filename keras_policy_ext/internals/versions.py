"""The Keras releases kpe was verified on, and the signatures of what it patches.

kpe's use of Keras internals was verified on the last patch release of
every minor release in `VERIFIED_KERAS` (its unit and integration suites
run on each, on every backend). `check_version()`, which `kpe.install()`
calls, refuses a Keras older than the range (`RuntimeError`) and warns once
(`RuntimeWarning`) about a newer one; `signature_mismatch()` tells whether a
Keras attribute still has the parameters kpe's replacement relies on.

>>> from keras_policy_ext.internals import versions
>>> versions.VERIFIED_RANGE
'keras>=3.8,<3.16 (verified: 3.8.0, 3.9.2, 3.10.0, 3.11.3, 3.12.4, 3.13.2, 3.14.1, 3.15.1)'
>>> versions.parse("3.10.0"), versions.parse("3.16.0.dev2026")
((3, 10, 0), (3, 16, 0))
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any

import keras

# The last patch release of each minor release verified (tox: keras3.8-jax ...).
VERIFIED_KERAS = ("3.8.0", "3.9.2", "3.10.0", "3.11.3", "3.12.4", "3.13.2", "3.14.1", "3.15.1")
OLDEST = (3, 8)  # minor releases, inclusive
NEWEST = (3, 15)
VERIFIED_RANGE = (
    f"keras>={OLDEST[0]}.{OLDEST[1]},<{NEWEST[0]}.{NEWEST[1] + 1} "
    f"(verified: {', '.join(VERIFIED_KERAS)})"
)

_warned: set[str] = set()  # the newer Keras versions already warned about


def parse(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: `"3.16.0rc1"` -> `(3, 16, 0)`.

    >>> from keras_policy_ext.internals.versions import parse
    >>> parse("3.15.1")
    (3, 15, 1)
    """
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def keras_version() -> str:
    """The running Keras's version string (`keras.__version__`)."""
    return keras.__version__


def standing(version: str | None = None) -> str:
    """Where a Keras version stands against the verified range: `"older"`,
    `"verified"` or `"newer"` (default: the running Keras).

    >>> from keras_policy_ext.internals.versions import standing
    >>> standing("3.7.0"), standing("3.12.1"), standing("3.15.9"), standing("3.16.0")
    ('older', 'verified', 'verified', 'newer')
    """
    minor = parse(version or keras_version())[:2]
    if minor < OLDEST:
        return "older"
    if minor > NEWEST:
        return "newer"
    return "verified"


def check_version() -> None:
    """Refuses a Keras older than the range; warns once about a newer one.

    Raises:
        RuntimeError: naming the running Keras and the verified range, when
            Keras is older than the range.

    >>> from keras_policy_ext.internals import versions
    >>> versions.check_version()  # the running Keras is in the range
    """
    version = keras_version()
    where = standing(version)
    if where == "older":
        raise RuntimeError(
            f"keras_policy_ext does not support Keras {version}: it needs {VERIFIED_RANGE}. "
            f"Upgrade Keras (pip install 'keras>={OLDEST[0]}.{OLDEST[1]}')."
        )
    if where == "newer" and version not in _warned:
        _warned.add(version)
        warnings.warn(
            f"keras_policy_ext was verified on {VERIFIED_RANGE}, not on Keras {version}: "
            "each Keras internal it patches is checked at install (presence and signature) "
            "and each fix's probe decides again whether it is needed, but run "
            "`keras-policy-ext check` on your layers before relying on it.",
            RuntimeWarning,
            stacklevel=3,
        )


def signature_mismatch(obj: Any, expects: Any) -> str | None:
    """What differs between a Keras attribute and what kpe relies on (`None`: nothing).

    `expects` is a type (`property`, `dict`: the attribute must be one), or a
    tuple of parameter names: `"name"` entries are the leading positional
    parameters, in order (kpe's replacement passes them on by position),
    `"name="` entries parameters anywhere that take a keyword (kpe passes
    them by name).

    >>> import keras
    >>> from keras_policy_ext.internals.versions import signature_mismatch
    >>> signature_mismatch(keras.layers.Layer.add_weight, ("self", "shape=", "dtype="))
    >>> signature_mismatch(keras.layers.Layer.add_weight, ("self", "shapes="))
    'parameters (self, ...) where kpe relies on (self, ..., shapes=)'
    """
    if expects is None:
        return None
    if isinstance(expects, type):
        if isinstance(obj, expects):
            return None
        return f"a {type(obj).__name__} where kpe relies on a {expects.__name__}"
    wanted = "(" + ", ".join(expects) + ")"
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return f"no signature where kpe relies on {wanted}"
    positional = [e for e in expects if not e.endswith("=")]
    keywords = [e[:-1] for e in expects if e.endswith("=")]
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if list(params)[: len(positional)] == positional and all(
        k in params and params[k].kind in by_keyword for k in keywords
    ):
        return None
    have = list(params)[: len(positional)] + (["..."] if len(params) > len(positional) else [])
    relied = positional + (["..."] if keywords else []) + [f"{k}=" for k in keywords]
    return f"parameters ({', '.join(have)}) where kpe relies on ({', '.join(relied)})"
