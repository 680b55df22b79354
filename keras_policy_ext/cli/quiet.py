"""Native log lines (TensorFlow, absl, oneDNN, XLA) kept off the terminal.

TensorFlow writes C++ log lines to file descriptor 2 when it loads, before
absl's logging is initialized, so `TF_CPP_MIN_LOG_LEVEL` cannot silence all
of them. The command reads its backend processes' stderr through
`is_native_log`, and `native_logs_filtered` drops such lines from this
process's own descriptor 2 while Keras is imported (`info`, usage checks).
`--verbose` keeps them.

>>> from keras_policy_ext.cli.quiet import is_native_log
>>> is_native_log("I0000 00:00:1795.1  2401 port.cc:153] oneDNN custom operations are on.")
True
>>> is_native_log("WARNING: All log messages before absl::InitializeLog() is called are written")
True
>>> is_native_log("kpe-progress 3/40")
False
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

_NATIVE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.]+:\d+\]"  # glog: I0000 time pid file:line]
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r")"
)
# What the command sets in its backend processes before they import anything.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}


def is_native_log(line: str) -> bool:
    """Whether a stderr line is a native library's log line, not a Python message."""
    return _NATIVE.match(line) is not None


@contextlib.contextmanager
def native_logs_filtered(enabled: bool = True) -> Iterator[None]:
    """Drops native log lines written to descriptor 2 inside the block.

    Everything else written to stderr (Python warnings, tracebacks) passes
    through, line by line, in order. A no-op when `enabled` is false.
    """
    if not enabled:
        yield
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if not is_native_log(raw.decode("utf-8", "replace")):
                    os.write(saved, raw)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=5)
        os.close(saved)
