"""Runs the examples of docs and modules, once per Keras backend.

Markdown and reST files are read as `keras_policy_ext.cli.docsource`
describes (fences, lists, blockquotes, code blocks): their `>>>` examples
and their prompt-less ```` ```python ```` blocks run in the order of the
file, in one namespace, as one script: a block that raises is a failure
(its traceback names the file's own lines) and nothing after it runs. A
Python file is imported (by its own name where that imports this very
file, as `python -m doctest` does) and its docstrings' `>>>` examples run.
A file with nothing to run is never counted as passed. `ELLIPSIS` and
`NORMALIZE_WHITESPACE` are on. An example is skipped on one backend with a
directive, as doctest's own directives work: `>>> x = 1  # doctest:
+SKIP_TORCH` (also `+SKIP_JAX`, `+SKIP_TENSORFLOW`); `+SKIP_WITHOUT_TENSORFLOW`
(also `_JAX`, `_TORCH`) skips it where that library is not installed (Keras's
preprocessing layers run on TensorFlow, whatever the backend). Each file gets fresh
globals, `setup` code run in them first, and kpe installed for it with
`plugin=True`; global policy state is restored after each file.

`run_files` runs files once per backend, each backend in its own process,
the files one after another: a file that crashes its process, or runs past
`timeout` seconds, is reported as that file's error and a fresh process
goes on with the next file, so no other file's results are lost.

>>> import keras, os, tempfile
>>> from keras_policy_ext.cli.doctests import run_file
>>> skip = "# doctest: +SKIP_" + keras.backend.backend().upper()
>>> text = "\\n".join([">>> 1 + 1", "2", ">>> 1 + 1  " + skip, "3", ">>> 2 * 3", "5"])
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = os.path.join(tmp, "example.md")
...     with open(path, "w") as f:
...         _ = f.write(text + "\\n")
...     result = run_file(path)
>>> result["attempted"], result["failed"], result["skipped"], result["error"]
(2, 1, 1, None)
>>> print(result["failures"][0], end="")
*****...
File "...example.md", line 5, in example.md
Failed example:
    2 * 3
Expected:
    5
Got:
    6
"""

from __future__ import annotations

import doctest
import faulthandler
import importlib
import importlib.util
import itertools
import json
import os
import re
import sys
import tempfile
import textwrap
import threading
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_policy_ext.backends import BACKENDS, installed_backends
from keras_policy_ext.cli.docsource import (
    CodeBlock,
    DocstringParser,
    check_files,
    expand_paths,
    read_doc,
    read_examples,
)
from keras_policy_ext.cli.runner import child_main, run_per_backend

__all__ = [
    "FORMATS",
    "SKIP_FLAGS",
    "check_files",
    "check_setup",
    "expand_paths",
    "format_report",
    "read_examples",
    "run_file",
    "run_files",
    "status",
    "summary",
    "to_json",
    "to_junit",
]

# Option flags for `# doctest: +SKIP_JAX` etc., by backend; and for
# `# doctest: +SKIP_WITHOUT_TENSORFLOW` etc.: an example that needs another
# backend's library (Keras's preprocessing layers run on TensorFlow) is skipped
# where it is not installed.
SKIP_FLAGS = {b: doctest.register_optionflag(f"SKIP_{b.upper()}") for b in BACKENDS}
SKIP_WITHOUT_FLAGS = {b: doctest.register_optionflag(f"SKIP_WITHOUT_{b.upper()}") for b in BACKENDS}
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
VERDICTS = {0: "OK", 1: "FAILED", 2: "INCOMPLETE"}
# Seconds a backend's process may take to start (import Keras) on top of its files' `timeout`.
STARTUP_SECONDS = 300.0
MODULE = "keras_policy_ext.cli.doctests"

_module_ids = itertools.count()
_PRIVATE = "_kpe_doctest_"  # the prefix of a module run under a name of its own
_DIRECTIVE = re.compile(r"\s*#\s*doctest:\s*([^\n'\"]*)$")


class _BackendRunner(doctest.DocTestRunner):
    """Skips examples flagged `SKIP_<BACKEND>` for the running backend."""

    def __init__(self, backend: str) -> None:
        super().__init__(verbose=False, optionflags=OPTIONFLAGS)
        installed = installed_backends()
        self.skip_flags = [SKIP_FLAGS[backend]] + [
            flag for b, flag in SKIP_WITHOUT_FLAGS.items() if b not in installed
        ]
        self.skipped = 0

    def run(self, test: doctest.DocTest, *args: Any, **kwargs: Any) -> Any:
        for example in test.examples:
            if any(example.options.get(flag) for flag in self.skip_flags):
                example.options[doctest.SKIP] = True
            if example.options.get(doctest.SKIP):
                self.skipped += 1
        return super().run(test, *args, **kwargs)

    def skips(self, block: CodeBlock) -> bool:
        """Whether a code block's first-line directive skips it here (`# doctest: +SKIP_JAX`)."""
        directive = _DIRECTIVE.match(block.source.split("\n", 1)[0])
        words = directive[1].replace(",", " ").split() if directive else []
        flags = {doctest.OPTIONFLAGS_BY_NAME.get(w[1:]) for w in words if w.startswith("+")}
        return any(flag in flags for flag in [doctest.SKIP, *self.skip_flags])

    def run_block(self, block: CodeBlock, path: str, globs: dict, later: int) -> str | None:
        """Runs a code block in `globs`; a failure's report (doctest's layout), or None.

        It is compiled with `path` as its file name, padded so its lines are
        the file's: a traceback shows the file's own lines. `later` counts
        the examples that will not run after a failure.
        """
        self.tries += 1
        try:
            padded = "\n" * (block.lineno - 1) + block.source
            exec(compile(padded, path, "exec", dont_inherit=True), globs)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            self.failures += 1
            frames = traceback.extract_tb(e.__traceback__)
            own = [f for f in frames if f.filename == path]
            line = own[-1].lineno if own else block.lineno
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
            last = block.lineno + block.source.count("\n") - 1
            rest = f"\n{later} later example{'s' * (later != 1)} did not run\n" if later else ""
            return (
                f'{"*" * 70}\nFile "{path}", line {line}, in {os.path.basename(path)}\n'
                f"Failed code block (lines {block.lineno}-{last}):\n"
                f"{textwrap.indent(block.source, '    ')}Raised:\n{textwrap.indent(tb, '    ')}"
                + rest
            )
        return None


def _result(
    path: str,
    backend: str,
    attempted: int = 0,
    failed: int = 0,
    skipped: int = 0,
    failures: Sequence[str] = (),
    error: str | None = None,
    examples: int | None = None,
) -> dict[str, Any]:
    """A file's result; `examples`: how many it has (`>>>` examples and code blocks)."""
    return {
        "file": path,
        "backend": backend,
        "attempted": attempted,
        "failed": failed,
        "skipped": skipped,
        "examples": attempted + skipped if examples is None else examples,
        "failures": list(failures),
        "error": error,
    }


def _import_own(name: str, file: Path, root: Path) -> tuple[Any, str | None]:
    """`name` imported from `root` (put first on `sys.path` meanwhile) if it is `file`.

    Returns the module, or None, and the name to unload after: `name` when
    this import loaded it (it was not in `sys.modules` before).
    """
    fresh = name not in sys.modules
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    finally:
        sys.path.remove(str(root))
    module_file = getattr(module, "__file__", None)
    if module_file and Path(module_file).resolve() == file:
        return module, name if fresh else None
    if fresh and module is not None:  # another file of that name: not ours to keep
        sys.modules.pop(name, None)
    return None, None


def _load_module(path: str) -> tuple[Any, str | None]:
    """Imports `path`, returning the module and the name to unload after.

    A file is imported by its own (dotted, inside a package) name when that
    name, imported from the file's root directory, imports this very file,
    as `python -m doctest` does: a package's module never runs twice, and
    its examples' `import mod` is the module they run in. Any other file
    (its name taken by another module) runs under a unique name.
    """
    file = Path(path).resolve()
    parts = [] if file.stem == "__init__" else [file.stem]
    root = file.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    if parts:
        module, unload = _import_own(".".join(parts), file, root)
        if module is not None:
            return module, unload
    name = f"{_PRIVATE}{next(_module_ids)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python module: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module, name


class _FileError(Exception):
    """Why a file's examples could not run (its import, its setup, its parsing)."""


def _error_text(what: str, error: BaseException) -> str:
    return f"{what}: {type(error).__name__}: {error}"


def _apply_setup(setup: str | None, tests: list[doctest.DocTest], base: dict) -> None:
    """Runs `setup` once in a copy of `base`; every test's globals get what it set."""
    if setup is None:
        return
    namespace = dict(base)
    try:
        exec(compile(setup, "<setup>", "exec"), namespace)
    except Exception as e:
        tail = traceback.format_exception_only(type(e), e)[-1].strip()
        raise _FileError(f"the setup code failed: {tail}") from e
    changed = {k: v for k, v in namespace.items() if k not in base or base[k] is not v}
    for test in tests:
        test.globs.update(changed)


def _doctests(
    path: str,
) -> tuple[list[doctest.DocTest], list[CodeBlock], dict, str | None]:
    """The file's doctests, its code blocks, the globals they start from, a module to unload."""
    if path.endswith(".py"):
        try:
            module, unload = _load_module(path)
        except Exception as e:
            raise _FileError(_error_text(f"cannot import {path}", e)) from e
        finder = doctest.DocTestFinder(parser=DocstringParser())
        name = module.__name__
        if name.startswith(_PRIVATE):  # failures name the file, not the private name
            name = Path(path).stem
        try:
            tests = finder.find(module, name)
            return tests, [], module.__dict__, unload
        except BaseException:
            if unload is not None:
                sys.modules.pop(unload, None)
            raise
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _FileError(_error_text(f"cannot read {path}", e)) from e
    globs = {"__name__": "__main__"}
    name = os.path.basename(path)
    doc_text, blocks = read_doc(path, text)
    test = doctest.DocTestParser().get_doctest(doc_text, globs, name, path, 0)
    return [test], blocks, dict(globs), None


def _steps(test: doctest.DocTest, blocks: list[CodeBlock]) -> list[Any]:
    """The file's examples in its order: runs of `>>>` examples (DocTests) and code blocks."""
    if not blocks:
        return [test]
    items = sorted(
        [(e.lineno + 1, 0, e) for e in test.examples] + [(b.lineno, 1, b) for b in blocks],
        key=lambda item: item[:2],
    )
    steps: list[Any] = []
    for _, _, item in items:
        if isinstance(item, CodeBlock):
            steps.append(item)
        elif steps and isinstance(steps[-1], doctest.DocTest):
            steps[-1].examples.append(item)
        else:
            step = doctest.DocTest([item], test.globs, test.name, test.filename, 0, None)
            step.globs = test.globs  # shared with the code blocks, not a copy
            steps.append(step)
    return steps


def run_file(path: str, setup: str | None = None, plugin: bool = False) -> dict[str, Any]:
    """Runs one file's examples here, on the current Keras backend.

    `setup` is Python code run in the file's globals before its examples
    (a module's: once, in a copy of its globals, and what it sets reaches
    every docstring's); `plugin=True` installs kpe for the file, after its
    examples were found (the functions kpe patches are no longer the
    module's own) and before the setup runs. Returns `{"file", "backend",
    "attempted", "failed", "skipped", "failures", "error"}`: `failures` is
    doctest's report of each failed example; `error` says why the file's
    examples could not run (a file that cannot be read or imported, a setup
    that raises, a malformed example), else None.
    """
    import keras

    from keras_policy_ext import plugin as kpe_plugin
    from keras_policy_ext.testing.state import clean_state

    backend = keras.backend.backend()
    with clean_state():
        try:
            tests, blocks, base, unload = _doctests(path)
        except _FileError as e:
            return _result(path, backend, error=str(e))
        except ValueError as e:  # doctest's parser: a malformed example
            return _result(path, backend, error=_error_text("cannot read its examples", e))
        examples = sum(len(t.examples) for t in tests) + len(blocks)
        runner = _BackendRunner(backend)
        failures: list[str] = []
        try:
            if plugin:
                kpe_plugin.install()
            _apply_setup(setup, tests, base)
            for test in tests:  # a doc file has one; a module one per docstring, no blocks
                _run_steps(runner, _steps(test, blocks), path, test.globs, failures)
        except _FileError as e:
            return _result(path, backend, error=str(e), examples=examples)
        finally:
            for test in tests:
                test.globs.clear()
            if unload is not None:
                sys.modules.pop(unload, None)
        return _result(
            path, backend, runner.tries, runner.failures, runner.skipped, failures, None, examples
        )


def _run_steps(
    runner: _BackendRunner, steps: list[Any], path: str, globs: dict, out: list[str]
) -> None:
    """Runs DocTests and code blocks in order; a failing code block stops the rest (a script)."""
    for i, step in enumerate(steps):
        if isinstance(step, doctest.DocTest):
            runner.run(step, out=out.append, clear_globs=False)
            continue
        if runner.skips(step):
            runner.skipped += 1
            continue
        later = sum(
            len(s.examples) if isinstance(s, doctest.DocTest) else 1 for s in steps[i + 1 :]
        )
        failure = runner.run_block(step, path, globs, later)
        if failure is not None:
            out.append(failure)
            return


def check_setup(codes: Sequence[str] | None) -> str | None:
    """The `--setup` codes joined into one, compiled (not run); `ValueError` if they do not.

    >>> from keras_policy_ext.cli.doctests import check_setup
    >>> check_setup(["import keras", "from keras import ops"])
    'import keras\\nfrom keras import ops'
    >>> check_setup(["import keras", "1 +"])
    Traceback (most recent call last):
    ...
    ValueError: --setup does not compile: SyntaxError: invalid syntax (line 2)
    """
    if not codes:
        return None
    code = "\n".join(codes)
    try:
        compile(code, "<setup>", "exec", dont_inherit=True)
    except SyntaxError as e:
        raise ValueError(
            f"--setup does not compile: SyntaxError: {e.msg} (line {e.lineno})"
        ) from None
    return code


class _Stopped(Exception):
    """Raised in a backend's thread to stop its process (the run was interrupted)."""


def _timeout_text(timeout: float, dump: str, path: str = "") -> str:
    """The timeout, and the example or code block that was running (from faulthandler's dump)."""
    example = re.search(r'File "<doctest (.+?)>", line (\d+)', dump)
    block = re.search(rf'File "{re.escape(path)}", line (\d+)', dump) if path else None
    where = f" in example {example[1]} (its line {example[2]})" if example else ""
    if block and not example:
        where = f" in the code block at line {block[1]} of {os.path.basename(path)}"
    return f"timed out after {timeout:g} s (--timeout){where}; its process was stopped"


def _run_backend(
    backend: str, files: list[str], args: dict, out: list[dict], stop: threading.Event
) -> None:
    """One backend's files, in as many processes as crashes and timeouts make it take.

    Whatever stops it early (an interrupt, a failure of this runner) leaves
    an error for each file it did not report, never a silent gap.
    """
    try:
        _run_backend_files(backend, files, args, out, stop)
    except _Stopped:
        reason = "the run was interrupted"
    except Exception as e:
        reason = _error_text("the runner failed", e)
    else:
        return
    out += [_result(p, backend, error=reason) for p in files[len(out) :]]


def _run_backend_files(
    backend: str, files: list[str], args: dict, out: list[dict], stop: threading.Event
) -> None:
    def tick(_: Any) -> None:
        if stop.is_set():
            raise _Stopped

    pending = list(files)
    timeout = args.get("timeout")
    while pending:
        with tempfile.TemporaryDirectory(prefix="kpe-doctest-") as tmp:
            watchdog = os.path.join(tmp, "timeout.txt")
            limit = None if timeout is None else timeout * (len(pending) + 1) + STARTUP_SECONDS
            child = run_per_backend(
                MODULE,
                {**args, "paths": pending, "watchdog": watchdog},
                [backend],
                on_tick=tick,
                timeout=limit,
            )[backend]
            dump = Path(watchdog).read_text(errors="replace") if os.path.exists(watchdog) else ""
        done = [e["file_result"] for e in child.events if "file_result" in e]
        started = sum("start" in e for e in child.events)
        out += done
        if child.finished:
            return
        if started > len(done):  # it died in a file: that file's error, and on to the next
            if dump.startswith("Timeout"):
                error = _timeout_text(timeout, dump, pending[len(done)])
            else:
                error = f"the {backend} process {child.error}"
            out.append(_result(pending[len(done)], backend, error=error))
            pending = pending[len(done) + 1 :]
        else:  # it died between files (starting up): the rest cannot run either
            error = f"the {backend} process {child.error}"
            out += [_result(p, backend, error=error) for p in pending[len(done) :]]
            return


def run_files(
    paths: Sequence[str],
    backends: Sequence[str],
    *,
    setup: str | None = None,
    plugin: bool = False,
    timeout: float | None = None,
) -> dict[str, list[dict]]:
    """Runs the files' examples once per backend, the backends concurrently.

    Directories are expanded; files that cannot be read raise `ValueError`
    first (`check_files`), before any process starts. Returns `{backend:
    [run_file result per file, in order]}`. Each backend's files run one
    after another in its own process; one that crashes the process or runs
    past `timeout` seconds gets an `error` and a new process takes the next.
    """
    files = check_files(paths)
    args = {"setup": setup, "plugin": plugin, "timeout": timeout}
    results: dict[str, list[dict]] = {b: [] for b in backends}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_run_backend, args=(b, files, args, results[b], stop))
        for b in backends
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except BaseException:  # ^C: stop every backend's process before leaving
        stop.set()
        for thread in threads:
            thread.join()
        raise
    named = {os.path.normpath(p) for p in paths if not os.path.isdir(p)}
    for rs in results.values():
        for r in rs:
            r["named"] = os.path.normpath(r["file"]) in named
    return results


def _empty(result: dict) -> bool:
    """A file that ran without an error and had nothing to run: no example, no code block."""
    return not result.get("error") and result.get("examples", 1) == 0


def _totals(results: list[dict]) -> dict[str, int]:
    return {
        "passed": sum(r["attempted"] - r["failed"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "skipped": sum(r["skipped"] for r in results),
        "errors": sum(bool(r.get("error")) for r in results),
    }


def _counts(totals: dict[str, int]) -> str:
    text = f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    errors = totals["errors"]
    return text + (f", {errors} error{'s' * (errors != 1)}" if errors else "")


def status(results: dict[str, list[dict]]) -> int:
    """The exit status: 2 when a file could not run or no example ran, 1 on a failure, else 0.

    A file named on the command line with nothing to run (no `>>>` example
    and no code block) is 2 too: it was to be verified, and nothing was. One
    found in a directory is reported as such, and never counted as passed.

    >>> from keras_policy_ext.cli.doctests import status
    >>> ok = {"attempted": 2, "failed": 0, "skipped": 0, "error": None}
    >>> status({"jax": [ok]}), status({"jax": [{**ok, "failed": 1}]})
    (0, 1)
    >>> status({"jax": [{**ok, "error": "timed out"}]}), status({"jax": [{**ok, "attempted": 0}]})
    (2, 2)
    """
    every = [r for rs in results.values() for r in rs]
    if any(r.get("error") for r in every) or not any(r["attempted"] for r in every):
        return 2
    if any(_empty(r) and r.get("named", True) for r in every):
        return 2
    return 1 if any(r["failed"] for r in every) else 0


def summary(results: dict[str, list[dict]]) -> str:
    """The verdict and totals; each backend's with more than one; backends that ran nothing.

    >>> from keras_policy_ext.cli.doctests import summary
    >>> ok = {"file": "a.md", "attempted": 2, "failed": 0, "skipped": 1, "error": None}
    >>> print(summary({"jax": [ok], "torch": [{**ok, "attempted": 0, "error": "crashed"}]}))
    INCOMPLETE: 2 passed, 0 failed, 2 skipped, 1 error (1 file, 2 backends)
      jax: 2 passed, 0 failed, 1 skipped
      torch: 0 passed, 0 failed, 1 skipped, 1 error
      no example ran on torch
    """
    every = [r for rs in results.values() for r in rs]
    files = len(dict.fromkeys(r["file"] for r in every))
    lines = [
        f"{VERDICTS[status(results)]}: {_counts(_totals(every))} "
        f"({files} file{'s' * (files != 1)}, "
        f"{len(results)} backend{'s' * (len(results) != 1)})"
    ]
    if len(results) > 1:
        lines += [f"  {b}: {_counts(_totals(rs))}" for b, rs in results.items()]
    idle = [b for b, rs in results.items() if not any(r["attempted"] for r in rs)]
    if idle:
        lines.append(f"  no example ran on {', '.join(idle)}")
    empty = list(dict.fromkeys(os.path.basename(r["file"]) for r in every if _empty(r)))
    if empty:
        lines.append(
            f"  nothing to run in {', '.join(empty)}: no >>> example and no ```python block "
            "(prompt-less ```python and .. code-block:: python blocks run; 'notest' and "
            "'<!-- skip: next -->' opt one out)"
        )
    return "\n".join(lines)


def _cell(result: dict) -> str:
    if result.get("error") and not result["attempted"]:
        return "ERROR"
    if _empty(result):
        return "nothing to run"
    passed = result["attempted"] - result["failed"]
    if result["failed"]:
        text = f"{result['failed']} FAILED of {result['attempted']}"
    elif result["attempted"] or not result["skipped"]:
        text = f"{passed} passed"
    else:
        text = "0 run"
    return text + (f", {result['skipped']} skipped" if result["skipped"] else "")


def format_report(results: dict[str, list[dict]]) -> str:
    """A file x backend table of `run_files` results, the failures and errors, the summary.

    >>> from keras_policy_ext.cli.doctests import format_report
    >>> ok = {"file": "README.md", "attempted": 3, "failed": 0, "skipped": 1,
    ...       "failures": [], "error": None}
    >>> bad = {**ok, "failed": 1, "failures": ["boom\\n"]}
    >>> print(format_report({"jax": [ok], "torch": [bad]}))
    README.md  jax: 3 passed, 1 skipped  torch: 1 FAILED of 3, 1 skipped
    <BLANKLINE>
    [torch] boom
    <BLANKLINE>
    FAILED: 5 passed, 1 failed, 2 skipped (1 file, 2 backends)
      jax: 3 passed, 0 failed, 1 skipped
      torch: 2 passed, 1 failed, 1 skipped
    """
    files = list(dict.fromkeys(r["file"] for rs in results.values() for r in rs))
    by_key = {(r["file"], b): r for b, rs in results.items() for r in rs}
    width = max(map(len, files), default=0)
    lines = [
        "  ".join(
            [file.ljust(width)]
            + [f"{b}: {_cell(by_key[file, b]) if (file, b) in by_key else '-'}" for b in results]
        ).rstrip()
        for file in files
    ]
    lines.append("")
    for backend, rs in results.items():
        for r in rs:
            lines += [f"[{backend}] {failure}" for failure in r["failures"]]
            if r.get("error"):
                lines += [f"[{backend}] {r['file']}: ERROR: {r['error']}\n"]
    lines.append(summary(results))
    return "\n".join(lines)


def to_json(results: dict[str, list[dict]]) -> str:
    """The results as JSON: the verdict, the totals, and every file's result per backend.

    >>> import json
    >>> from keras_policy_ext.cli.doctests import to_json
    >>> ok = {"file": "a.md", "attempted": 2, "failed": 0, "skipped": 0,
    ...       "failures": [], "error": None}
    >>> data = json.loads(to_json({"jax": [ok]}))
    >>> data["verdict"], data["totals"], data["backends"]["jax"][0]["passed"]
    ('OK', {'passed': 2, 'failed': 0, 'skipped': 0, 'errors': 0}, 2)
    """
    code = status(results)
    data = {
        "status": code,
        "verdict": VERDICTS[code],
        "ok": code == 0,
        "totals": _totals([r for rs in results.values() for r in rs]),
        "backends": {
            b: [{**r, "passed": r["attempted"] - r["failed"]} for r in rs]
            for b, rs in results.items()
        },
    }
    return json.dumps(data, indent=2)


def to_junit(results: dict[str, list[dict]]) -> str:
    """JUnit XML: a test suite per backend, a test case per file.

    A file with failed examples is a failure (doctest's reports as its
    text), one that could not run an error, one whose every example was
    skipped is skipped.

    >>> import xml.etree.ElementTree as ET
    >>> from keras_policy_ext.cli.doctests import to_junit
    >>> bad = {"file": "a.md", "attempted": 2, "failed": 1, "skipped": 0,
    ...        "failures": ["boom\\n"], "error": None}
    >>> suite = ET.fromstring(to_junit({"jax": [bad]})).find("testsuite")
    >>> suite.get("name"), suite.get("failures"), suite.find("testcase").get("name")
    ('jax', '1', 'a.md')
    """
    suites = ET.Element("testsuites", name="keras-policy-ext doctest")
    for backend, rs in results.items():
        errors = [r for r in rs if r.get("error")]
        failing = [r for r in rs if r["failed"] and not r.get("error")]
        skipped = [r for r in rs if not r["attempted"] and not r.get("error")]
        suite = ET.SubElement(
            suites, "testsuite", name=backend, tests=str(len(rs)), failures=str(len(failing)),
            errors=str(len(errors)), skipped=str(len(skipped)),
        )  # fmt: skip
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"doctest.{backend}", name=r["file"])
            if r.get("error"):
                ET.SubElement(case, "error", message=r["error"])
            elif r["failed"]:
                message = f"{r['failed']} of {r['attempted']} examples failed"
                ET.SubElement(case, "failure", message=message).text = "".join(r["failures"])
            elif not r["attempted"]:
                ET.SubElement(case, "skipped", message=f"no example ran ({r['skipped']} skipped)")
    return ET.tostring(suites, encoding="unicode")


def to_markdown(results: dict[str, list[dict]]) -> str:
    """A Markdown file x backend table, each failure and error as an indented block, the verdict.

    >>> from keras_policy_ext.cli.doctests import to_markdown
    >>> ok = {"file": "a.md", "attempted": 2, "failed": 0, "skipped": 0,
    ...       "failures": [], "error": None}
    >>> broken = {**ok, "attempted": 0, "error": "crashed"}
    >>> print(to_markdown({"jax": [ok], "torch": [broken]}))
    | file | jax | torch |
    |---|---|---|
    | a.md | 2 passed | ERROR |
    <BLANKLINE>
        [torch] a.md: ERROR: crashed
    <BLANKLINE>
    **INCOMPLETE**: 2 passed, 0 failed, 0 skipped, 1 error (1 file, 2 backends)
      jax: 2 passed, 0 failed, 0 skipped
      torch: 0 passed, 0 failed, 0 skipped, 1 error
      no example ran on torch
    """
    files = list(dict.fromkeys(r["file"] for rs in results.values() for r in rs))
    by_key = {(r["file"], b): r for b, rs in results.items() for r in rs}
    lines = [f"| file | {' | '.join(results)} |", "|---" * (len(results) + 1) + "|"]
    for file in files:
        cells = [_cell(by_key[file, b]) if (file, b) in by_key else "-" for b in results]
        lines.append(f"| {file} | {' | '.join(cells)} |")
    for backend, rs in results.items():
        for r in rs:
            texts = [*r["failures"], *([f"{r['file']}: ERROR: {r['error']}\n"] * bool(r["error"]))]
            for text in texts:
                lines += ["", textwrap.indent(f"[{backend}] {text.rstrip()}", "    ")]
    verdict, _, rest = summary(results).partition(":")
    lines += ["", f"**{verdict}**:{rest}"]
    return "\n".join(lines)


FORMATS = {"table": format_report, "markdown": to_markdown, "json": to_json, "junit": to_junit}


def _child(args: dict, emit: Any) -> None:
    import keras

    keras.backend.backend()  # Keras and kpe load before any file's clock starts
    import keras_policy_ext.testing.state  # noqa: F401

    timeout = args.get("timeout")
    with open(args["watchdog"], "w") as watchdog:
        for path in args["paths"]:
            emit({"start": path})
            if timeout is not None:
                faulthandler.dump_traceback_later(timeout, exit=True, file=watchdog)
            try:
                result = run_file(path, args.get("setup"), bool(args.get("plugin")))
            finally:
                faulthandler.cancel_dump_traceback_later()
            emit({"file_result": result})


if __name__ == "__main__":
    child_main(_child)
