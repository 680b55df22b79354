"""Runs the `>>>` examples of docs and modules, once per Keras backend.

Markdown and reST files are read as `keras_policy_ext.cli.docsource`
describes (fences, lists, blockquotes, code blocks); a Python file is
imported and its docstrings' examples run. `ELLIPSIS` and
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
import threading
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_policy_ext.backends import BACKENDS, installed_backends
from keras_policy_ext.cli.docsource import (
    DocstringParser,
    check_files,
    doctest_text,
    expand_paths,
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


def _result(
    path: str,
    backend: str,
    attempted: int = 0,
    failed: int = 0,
    skipped: int = 0,
    failures: Sequence[str] = (),
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "file": path,
        "backend": backend,
        "attempted": attempted,
        "failed": failed,
        "skipped": skipped,
        "failures": list(failures),
        "error": error,
    }


def _load_module(path: str) -> tuple[Any, str | None]:
    """Imports `path`, returning the module and the name to unload after.

    A file inside a package is imported by its dotted name when that name
    imports this very file, so a package's module never runs twice; any
    other file runs as a stand-alone module under a unique name.
    """
    file = Path(path).resolve()
    parts = [] if file.stem == "__init__" else [file.stem]
    root = file.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    if root != file.parent:
        try:
            module = importlib.import_module(".".join(parts))
        except ImportError:
            module = None
        module_file = getattr(module, "__file__", None)
        if module_file and Path(module_file).resolve() == file:
            return module, None
    name = f"_kpe_doctest_{next(_module_ids)}_{file.stem}"
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


def _doctests(path: str) -> tuple[list[doctest.DocTest], dict, str | None]:
    """The file's doctests, the globals they start from, and a module to unload afterwards."""
    if path.endswith(".py"):
        try:
            module, unload = _load_module(path)
        except Exception as e:
            raise _FileError(_error_text(f"cannot import {path}", e)) from e
        finder = doctest.DocTestFinder(parser=DocstringParser())
        try:
            return finder.find(module), module.__dict__, unload
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
    test = doctest.DocTestParser().get_doctest(doctest_text(path, text), globs, name, path, 0)
    return [test], dict(globs), None


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
            tests, base, unload = _doctests(path)
        except _FileError as e:
            return _result(path, backend, error=str(e))
        except ValueError as e:  # doctest's parser: a malformed example
            return _result(path, backend, error=_error_text("cannot read its examples", e))
        runner = _BackendRunner(backend)
        failures: list[str] = []
        try:
            if plugin:
                kpe_plugin.install()
            _apply_setup(setup, tests, base)
            for test in tests:
                runner.run(test, out=failures.append)
        except _FileError as e:
            return _result(path, backend, error=str(e))
        finally:
            if unload is not None:
                sys.modules.pop(unload, None)
        return _result(path, backend, runner.tries, runner.failures, runner.skipped, failures)


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


def _timeout_text(timeout: float, dump: str) -> str:
    """The timeout, and the example that was running (from faulthandler's dump)."""
    example = re.search(r'File "<doctest (.+?)>", line (\d+)', dump)
    where = f" in example {example[1]} (its line {example[2]})" if example else ""
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
                error = _timeout_text(timeout, dump)
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
    return results


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
    return "\n".join(lines)


def _cell(result: dict) -> str:
    if result.get("error") and not result["attempted"]:
        return "ERROR"
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


FORMATS = {"table": format_report, "json": to_json, "junit": to_junit}


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
