"""Saving and restoring every piece of global policy state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from keras_policy_ext import config, plugin


@contextlib.contextmanager
def clean_state() -> Iterator[None]:
    """Restores kpe's default policy, the plugin, `floatx` and Keras's global on exit.

    A context manager, for tests (the `kpe_clean_state` pytest fixture uses it).

    The plugin goes back to installed or not as an explicit `install()`
    left it (open `installed()` blocks are theirs to close); Keras's own
    global policy of the calling thread goes back to the very object it
    held (or to unset).

    >>> import keras, keras_policy_ext as kpe
    >>> with kpe.testing.clean_state():
    ...     kpe.install()
    ...     keras.config.set_floatx("float64")
    >>> kpe.is_installed(), keras.config.floatx()
    (False, 'float32')
    """
    saved = config.snapshot()
    was_installed = plugin.installed_explicitly()
    floatx = keras.config.floatx()
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        if was_installed:
            plugin.install()
        else:
            plugin.uninstall()
        config.restore(saved)
