"""kpe's mutable policy state, in one small object below every module that reads it.

`STATE` holds the process-wide default (with the Keras session it was set
in: `keras.utils.clear_session()` starts a new one, which resets it) and
the context-local scope (policy and rules). `keras_policy_ext.config` is
its public face; the policy module reads `in_force()` for `DTypePolicy(None)`.

>>> from keras_policy_ext._state import PolicyState
>>> state = PolicyState()
>>> state.in_force() is None  # nothing set: the policy of floatx
True
>>> state.default = "a policy"
>>> state.in_force()
'a policy'
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from keras_policy_ext import internals


class PolicyState:
    """The default policy and the context-local scope."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._default: tuple[Any, Any] = (None, None)  # (policy, Keras session token)
        self.scoped: contextvars.ContextVar[Any] = contextvars.ContextVar(
            "keras_policy_ext_scoped_policy", default=None
        )
        self.scoped_rules: contextvars.ContextVar[Any] = contextvars.ContextVar(
            "keras_policy_ext_scoped_rules", default=None
        )

    @property
    def default(self) -> Any:
        """The default policy, or `None` (never set, or reset by `clear_session()`)."""
        policy, session = self._default
        return policy if policy is not None and session == internals.keras_session() else None

    @default.setter
    def default(self, policy: Any) -> None:
        self._default = (policy, internals.keras_session())

    def in_force(self) -> Any:
        """The innermost scope's policy here, else the default, else `None`."""
        policy = self.scoped.get()
        return policy if policy is not None else self.default


STATE = PolicyState()
