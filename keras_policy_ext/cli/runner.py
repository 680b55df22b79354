"""One subprocess per Keras backend: Keras reads `KERAS_BACKEND` once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any


def run_per_backend(
    module: str,
    args: dict[str, Any],
    backends: Sequence[str],
    on_line: Callable[[str, str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Runs `python -m module IN OUT` once per backend, concurrently.

    The child reads its arguments as JSON from `IN` and writes its result as
    JSON to `OUT`. `on_line(backend, line)` receives the child's stderr lines
    (progress). Returns `{backend: result}`; a child that fails without a
    result gives `{"error": <exit status and last stderr lines>}`.
    """
    with tempfile.TemporaryDirectory(prefix="kpe-") as tmp:
        children = {}
        for backend in backends:
            path_in = os.path.join(tmp, f"{backend}.in.json")
            path_out = os.path.join(tmp, f"{backend}.out.json")
            with open(path_in, "w") as f:
                json.dump(args, f)
            env = {
                **os.environ,
                "KERAS_BACKEND": backend,
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
            }
            child = subprocess.Popen(
                [sys.executable, "-m", module, path_in, path_out],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            children[backend] = (child, path_out)
        tails: dict[str, list[str]] = {}
        readers = [
            threading.Thread(target=_drain, args=(b, child, on_line, tails))
            for b, (child, _) in children.items()
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        results = {}
        for backend, (child, path_out) in children.items():
            if child.wait() == 0 and os.path.exists(path_out):
                with open(path_out) as f:
                    results[backend] = json.load(f)
            else:
                results[backend] = {
                    "error": f"exit status {child.returncode}: " + " | ".join(tails[backend])
                }
        return results


def _drain(backend, child, on_line, tails) -> None:
    """Reads a child's stderr to the end, keeping its last lines in `tails`."""
    tail: list[str] = []
    for line in child.stderr:
        line = line.rstrip("\n")
        if on_line is not None:
            on_line(backend, line)
        tail = (tail + [line])[-5:]
    tails[backend] = tail
