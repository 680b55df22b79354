import json
import sys
import textwrap
from pathlib import Path

import keras

import keras_policy_ext as kpe
from keras_policy_ext.backends import BACKENDS
from keras_policy_ext.cli import doctests

ROOT = Path(__file__).parents[1]
BACKEND = keras.backend.backend()
OTHER = next(b for b in BACKENDS if b != BACKEND)


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def counts(result):
    return result["attempted"], result["failed"], result["skipped"]


MARKDOWN = f"""\
    # Title

    ```python
    >>> 1 + 1
    2
    >>> 2 * 3
    5
    >>> raise RuntimeError("never here")  # doctest: +SKIP_{BACKEND.upper()}
    >>> "runs"  # doctest: +SKIP_{OTHER.upper()}
    'runs'
    >>> print("a   b")
    a b
    >>> list(range(20))
    [0, 1, ..., 19]

    ```
    """


def test_markdown_passes_fails_and_skips(tmp_path):
    result = doctests.run_file(write(tmp_path / "doc.md", MARKDOWN))
    assert counts(result) == (5, 1, 1)
    assert result["file"].endswith("doc.md") and result["backend"] == BACKEND
    [failure] = result["failures"]
    assert "line 6, in doc.md" in failure
    assert "Failed example:\n    2 * 3\nExpected:\n    5\nGot:\n    6" in failure
    assert json.loads(json.dumps(result)) == result


def test_rst_file(tmp_path):
    path = write(
        tmp_path / "doc.rst",
        """\
        Title
        =====

        .. code-block:: python

            >>> import keras_policy_ext as kpe
            >>> kpe.DTypePolicy("mixed_bfloat16").compute_dtype
            'bfloat16'
        """,
    )
    assert counts(doctests.run_file(path)) == (2, 0, 0)


def test_python_file_docstrings(tmp_path):
    path = write(
        tmp_path / "mod.py",
        '''\
        """A module.

        >>> double(2)
        4
        """


        def double(x):
            """Doubles.

            >>> double(3)
            7
            """
            return 2 * x
        ''',
    )
    modules = set(sys.modules)
    result = doctests.run_file(path)
    assert counts(result) == (2, 1, 0)
    assert "in _kpe_doctest_" in result["failures"][0]
    assert "double(3)" in result["failures"][0]
    assert set(sys.modules) == modules


def test_package_module_is_imported_by_its_name_not_run_twice():
    result = doctests.run_file(str(ROOT / "keras_policy_ext" / "policy.py"))
    assert result["attempted"] > 0 and result["failed"] == 0
    # A second run of policy.py would register a second DTypePolicy class.
    assert keras.saving.get_registered_object("keras_policy_ext>DTypePolicy") is kpe.DTypePolicy


def test_missing_and_broken_files(tmp_path):
    result = doctests.run_file(str(tmp_path / "missing.md"))
    assert counts(result) == (0, 1, 0)
    assert "FileNotFoundError" in result["failures"][0]
    result = doctests.run_file(write(tmp_path / "broken.py", "import no_such_module\n"))
    assert counts(result) == (0, 1, 0)
    assert "no_such_module" in result["failures"][0]


def test_fresh_globals_and_restored_state(tmp_path):
    first = write(
        tmp_path / "a.md",
        """\
        >>> import keras_policy_ext as kpe
        >>> kpe.install()
        >>> kpe.config.set_dtype_policy("mixed_float16")
        >>> defined_here = 1
        """,
    )
    assert counts(doctests.run_file(first)) == (4, 0, 0)
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")
    assert not kpe.is_installed()
    second = write(tmp_path / "b.md", ">>> defined_here\n1\n")
    assert "NameError" in doctests.run_file(second)["failures"][0]


def test_expand_paths(tmp_path):
    for name in ("z.md", "a.txt", "sub/b.rst", "sub/c.py", "__pycache__/d.py"):
        write(tmp_path / name, "")
    expanded = doctests.expand_paths([str(tmp_path), "README.md"])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in expanded[:-1]] == [
        "sub/b.rst",
        "sub/c.py",
        "z.md",
    ]
    assert expanded[-1] == "README.md"


def test_run_files_in_a_subprocess(tmp_path):
    write(tmp_path / "docs/ok.md", MARKDOWN.replace("    5\n", "    6\n"))
    write(tmp_path / "docs/bad.md", ">>> 1\n2\n")
    results = doctests.run_files([str(tmp_path / "docs")], [BACKEND])
    assert list(results) == [BACKEND]
    bad, ok = results[BACKEND]
    assert bad["file"].endswith("bad.md") and counts(bad) == (1, 1, 0)
    assert ok["file"].endswith("ok.md") and counts(ok) == (5, 0, 1)
    report = doctests.format_report(results)
    assert f"{BACKEND}: 1 FAILED of 1" in report
    assert f"{BACKEND}: 5 passed, 1 skipped" in report
    assert report.endswith("FAILED: 5 passed, 1 failed, 1 skipped (2 files, 1 backend)")


def test_run_files_reports_a_failed_subprocess(tmp_path):
    crash = write(tmp_path / "crash.md", ">>> import os; os._exit(3)\n")
    results = doctests.run_files([crash], [BACKEND])
    [entry] = results[BACKEND]
    assert counts(entry) == (0, 1, 0)
    assert "exited with status 3 before finishing" in entry["failures"][0]
    assert f"{BACKEND}: ERROR" in doctests.format_report(results)


def test_project_docs_pass():
    for path in (ROOT / "docs" / "mixed_precision.md", ROOT / "README.md"):
        result = doctests.run_file(str(path))
        assert result["failed"] == 0, "".join(result["failures"])
        assert result["attempted"] > 10
