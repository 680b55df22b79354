"""Helpers for testing code that uses kpe policies.

>>> import keras_policy_ext as kpe
>>> with kpe.testing.clean_state():
...     kpe.config.set_dtype_policy("mixed_float16")
>>> kpe.config.dtype_policy()
<DTypePolicy "float32">
"""

from keras_policy_ext.testing.state import clean_state

__all__ = ["clean_state"]
