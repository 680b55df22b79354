"""What the benchmark scripts share: one child process per backend, a Markdown table.

Keras reads `KERAS_BACKEND` once, at import, so a script measures each
backend in a child: `python SCRIPT --child --backend B ...`, which prints its
rows as JSON on its last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from keras_policy_ext.backends import BACKENDS, installed_backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, with `--backend` (one, or `all`) and the hidden `--child`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def at_least_one(text: str) -> int:
    """An `argparse` type: an int >= 1 (`--rounds`, `--megabytes`), else a usage error."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def child_or_report(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace], Any],
    report: Callable[[argparse.Namespace], int],
) -> int:
    """Every script's `main` once its arguments are parsed.

    In the child (`--child`): measure this backend and print the rows as JSON
    on the last stdout line (`run_child` reads them). Else: `report(args)`,
    which runs the children and prints the table; its exit status.
    """
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    return report(args)


def selected(choice: str) -> list[str]:
    """The backends for `--backend`: one, or every importable one for `all`."""
    if choice == "all":
        return installed_backends()
    return [choice]


def run_child(
    script: str, backend: str, flags: list[str], stream_stderr: bool = False
) -> tuple[list[dict] | None, int]:
    """Runs `script --child --backend backend *flags`; `(rows or None, exit status)`.

    The child gets `KERAS_BACKEND`, a quiet TensorFlow and the repository root
    on `PYTHONPATH` (for `integration.builders`). A failed child's stderr is
    echoed; with `stream_stderr`, all of it goes to this process's stderr as
    it comes (progress lines of a long run).
    """
    path = os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    command = [sys.executable, script, "--child", "--backend", backend, *flags]
    stderr = None if stream_stderr else subprocess.PIPE
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if result.returncode == 0:
        return json.loads(result.stdout.splitlines()[-1]), 0
    sys.stderr.write(result.stderr or "")
    return None, result.returncode


def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report_targets(script: str, backends: list[str], flags: list[str], value_header: str) -> int:
    """Runs `script`'s child per backend, prints its rows and the missed targets.

    Each row is a dict with `backend`, `case`, `value`, `target` and `met`.
    Returns the script's exit status: 1 when a child failed, else 0 (a missed
    target is a result, not a failure).
    """
    rows, crashed = [], False
    for backend in backends:
        backend_rows, _ = run_child(script, backend, flags)
        crashed |= backend_rows is None
        rows += backend_rows or []
    cells = [
        [r["backend"], r["case"], r["value"], r["target"], "yes" if r["met"] else "no"]
        for r in rows
    ]
    print(markdown_table(("Backend", "Case", value_header, "Target", "Met"), cells))
    missed = [f"{r['backend']}: {r['case']}" for r in rows if not r["met"]]
    if missed:
        print("\nMissed targets:\n" + "\n".join(f"- {m}" for m in missed))
    return 1 if crashed else 0
