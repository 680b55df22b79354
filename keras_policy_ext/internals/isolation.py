"""A block isolated from Keras's process-wide random streams and automatic names.

Keras draws the seed of every unseeded initializer, dropout and noise layer
from Python's `random` module when the object is made
(`keras.src.random.seed_generator.make_default_seed`), unseeded
`keras.random` calls from a global `SeedGenerator` kept in its global state,
and names every unnamed layer, model and optimizer from counters kept there
too (`object_name_uids`: `dense`, `dense_1`, ...). `keras.utils.set_random_seed`
seeds the random streams, but also TensorFlow's global seed (importing
TensorFlow on every backend where it is installed) and torch's, and leaves
them seeded. `isolated` seeds what Keras's layers draw from, starts the name
counters afresh, and puts all of it back on the way out, importing no backend.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
from keras.src.backend.common import global_state
from keras.src.random import seed_generator

# Keras's global-state key of its global SeedGenerator: a named constant since
# Keras 3.12, the same string written out in 3.8 to 3.11.
_GLOBAL_SEED_GENERATOR = getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator")
_NAME_UIDS = "object_name_uids"


@contextlib.contextmanager
def isolated(seed: int) -> Iterator[None]:
    """Runs the block as a fresh process would, with the random streams seeded.

    Inside, Python's and NumPy's global random streams are seeded with `seed`,
    Keras's global `SeedGenerator` is made anew from them, and Keras's
    automatic names start afresh: every layer built draws the same initial
    weights, dropout masks and noise, and gets the same name, whatever ran
    before. On the way out all of it is restored.

    Args:
        seed: a non-negative integer below 2**32.

    Returns:
        A context manager.

    Raises:
        ValueError: `seed` is not such an integer.

    >>> import keras
    >>> from keras_policy_ext.internals.isolation import isolated
    >>> def kernel():
    ...     layer = keras.layers.Dense(2)
    ...     layer.build((1, 3))
    ...     return layer.name, keras.ops.convert_to_numpy(layer.kernel).tolist()
    >>> with isolated(3):
    ...     first = kernel()
    >>> with isolated(3):
    ...     second = kernel()
    >>> first == second, first[0]
    (True, 'dense')
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"Invalid seed={seed!r}: expected an integer in [0, 2**32).")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generator = global_state.get_global_attribute(_GLOBAL_SEED_GENERATOR)
    names = global_state.get_global_attribute(_NAME_UIDS)
    random.seed(seed)
    np.random.seed(seed)
    global_state.set_global_attribute(_GLOBAL_SEED_GENERATOR, None)
    global_state.set_global_attribute(_NAME_UIDS, None)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(_GLOBAL_SEED_GENERATOR, generator)
        global_state.set_global_attribute(_NAME_UIDS, names)
