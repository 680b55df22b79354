"""Runs the `>>>` examples of docs and modules, once per Keras backend.

Markdown and reST files are doctest text files; a Python file is imported
and its docstrings' examples run. `ELLIPSIS` and `NORMALIZE_WHITESPACE` are
on. An example is skipped on one backend with a directive, as doctest's own
directives work: `>>> x = 1  # doctest: +SKIP_TORCH` (also `+SKIP_JAX`,
`+SKIP_TENSORFLOW`). Global policy state is restored after each file.

>>> import keras, os, tempfile
>>> from keras_policy_ext.cli.doctests import run_file
>>> skip = "# doctest: +SKIP_" + keras.backend.backend().upper()
>>> text = "\\n".join([">>> 1 + 1", "2", ">>> 1 + 1  " + skip, "3", ">>> 2 * 3", "5"])
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = os.path.join(tmp, "example.md")
...     with open(path, "w") as f:
...         _ = f.write(text + "\\n")
...     result = run_file(path)
>>> result["attempted"], result["failed"], result["skipped"]
(2, 1, 1)
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
import importlib
import importlib.util
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras

from keras_policy_ext.backends import BACKENDS
from keras_policy_ext.cli.runner import child_main, run_per_backend
from keras_policy_ext.testing.state import clean_state

# Option flags for `# doctest: +SKIP_JAX` etc., by backend.
SKIP_FLAGS = {b: doctest.register_optionflag(f"SKIP_{b.upper()}") for b in BACKENDS}
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
EXTENSIONS = (".md", ".rst", ".py")

_module_ids = itertools.count()


class _BackendRunner(doctest.DocTestRunner):
    """Skips examples flagged `SKIP_<BACKEND>` for the running backend."""

    def __init__(self) -> None:
        super().__init__(verbose=False, optionflags=OPTIONFLAGS)
        self.skip_flag = SKIP_FLAGS[keras.backend.backend()]
        self.skipped = 0

    def run(self, test: doctest.DocTest, *args: Any, **kwargs: Any) -> Any:
        for example in test.examples:
            if example.options.get(self.skip_flag):
                example.options[doctest.SKIP] = True
            if example.options.get(doctest.SKIP):
                self.skipped += 1
        return super().run(test, *args, **kwargs)


def _result(path: str, attempted: int, failures: list[str], skipped: int = 0) -> dict:
    return {
        "file": path,
        "backend": keras.backend.backend(),
        "attempted": attempted,
        "failed": len(failures),
        "skipped": skipped,
        "failures": failures,
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


def _doctests(path: str) -> tuple[list[doctest.DocTest], str | None]:
    """The file's doctests, and the name of a module to unload afterwards."""
    if path.endswith(".py"):
        module, unload = _load_module(path)
        return doctest.DocTestFinder().find(module), unload
    text = Path(path).read_text(encoding="utf-8")
    name = os.path.basename(path)
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "__main__"}, name, path, 0)
    return [test], None


def run_file(path: str) -> dict[str, Any]:
    """Runs one file's examples here, on the current Keras backend.

    Returns `{"file", "backend", "attempted", "failed", "skipped",
    "failures"}`, `failures` being doctest's report of each failed example.
    A file that cannot be read or imported gives `failed=1` and the error.
    """
    with clean_state():
        try:
            tests, unload = _doctests(path)
        except Exception as e:
            return _result(path, 0, [f"{path}: {type(e).__name__}: {e}\n"])
        runner = _BackendRunner()
        failures: list[str] = []
        try:
            for test in tests:
                runner.run(test, out=failures.append)
        finally:
            if unload is not None:
                sys.modules.pop(unload, None)
        return _result(path, runner.tries, failures, runner.skipped)


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Replaces each directory by its `.md`, `.rst` and `.py` files, sorted.

    >>> import os, tempfile
    >>> from keras_policy_ext.cli.doctests import expand_paths
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ("b.md", "a.py", "c.txt"):
    ...         open(os.path.join(tmp, name), "w").close()
    ...     [os.path.basename(p) for p in expand_paths([tmp, "README.md"])]
    ['a.py', 'b.md', 'README.md']
    """
    return [p for path in paths for p in _expand(path)]


def _expand(path: str) -> Iterator[str]:
    if not os.path.isdir(path):
        yield path
        return
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.join(root, f) for f in files if f.endswith(EXTENSIONS)]
    yield from sorted(found)


def run_files(paths: Sequence[str], backends: Sequence[str]) -> dict[str, list[dict]]:
    """Runs the files' examples once per backend, each in its own subprocess.

    Directories are expanded (`expand_paths`). Returns `{backend: [run_file
    result per file]}`; a backend whose subprocess fails gives one failed
    entry, for file `"*"`, carrying the error.
    """
    paths = expand_paths(paths)
    children = run_per_backend("keras_policy_ext.cli.doctests", {"paths": paths}, backends)
    results = {}
    for backend, child in children.items():
        results[backend] = [e["file_result"] for e in child.events if "file_result" in e]
        if not child.finished:
            results[backend].append(
                {
                    "file": "*",
                    "backend": backend,
                    "attempted": 0,
                    "failed": 1,
                    "skipped": 0,
                    "failures": [f"{backend} subprocess failed: {child.error}\n"],
                }
            )
    return results


def _cell(result: dict) -> str:
    if result["failed"] and not result["attempted"]:
        return "ERROR"
    passed = result["attempted"] - result["failed"]
    text = (
        f"{result['failed']} FAILED of {result['attempted']}"
        if result["failed"]
        else f"{passed} passed"
    )
    return text + (f", {result['skipped']} skipped" if result["skipped"] else "")


def format_report(results: dict[str, list[dict]]) -> str:
    """A file x backend table of `run_files` results, the failures, a total.

    >>> from keras_policy_ext.cli.doctests import format_report
    >>> ok = {"file": "README.md", "attempted": 3, "failed": 0, "skipped": 1,
    ...       "failures": []}
    >>> bad = {**ok, "failed": 1, "failures": ["boom\\n"]}
    >>> print(format_report({"jax": [ok], "torch": [bad]}))
    README.md  jax: 3 passed, 1 skipped  torch: 1 FAILED of 3, 1 skipped
    <BLANKLINE>
    [torch] boom
    <BLANKLINE>
    FAILED: 5 passed, 1 failed, 2 skipped (1 file, 2 backends)
    """
    files = list(dict.fromkeys(r["file"] for rs in results.values() for r in rs))
    by_key = {(r["file"], b): r for b, rs in results.items() for r in rs}
    width = max(map(len, files), default=0)
    lines = [
        "  ".join(
            [file.ljust(width)]
            + [f"{b}: {_cell(by_key[file, b]) if (file, b) in by_key else '-'}" for b in results]
        )
        for file in files
    ]
    lines.append("")
    failed = passed = skipped = 0
    for backend, rs in results.items():
        for r in rs:
            lines += [f"[{backend}] {failure}" for failure in r["failures"]]
            failed += r["failed"]
            passed += r["attempted"] - r["failed"]
            skipped += r["skipped"]
    lines.append(
        f"{'FAILED' if failed else 'OK'}: {passed} passed, {failed} failed, "
        f"{skipped} skipped ({len(files)} file{'s' * (len(files) != 1)}, "
        f"{len(results)} backend{'s' * (len(results) != 1)})"
    )
    return "\n".join(lines)


def _child(args: dict, emit: Any) -> None:
    for path in args["paths"]:
        emit({"file_result": run_file(path)})


if __name__ == "__main__":
    child_main(_child)
