import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import pytest

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
    assert 'mod.py", line 11, in mod.double' in result["failures"][0]
    assert "double(3)" in result["failures"][0]
    assert set(sys.modules) == modules


def test_package_module_is_imported_by_its_name_not_run_twice():
    result = doctests.run_file(str(ROOT / "keras_policy_ext" / "policy.py"))
    assert result["attempted"] > 0 and result["failed"] == 0
    # A second run of policy.py would register a second DTypePolicy class.
    assert keras.saving.get_registered_object("keras_policy_ext>DTypePolicy") is kpe.DTypePolicy


def test_missing_and_broken_files(tmp_path):
    result = doctests.run_file(str(tmp_path / "missing.md"))
    assert counts(result) == (0, 0, 0)
    assert "FileNotFoundError" in result["error"]
    result = doctests.run_file(write(tmp_path / "broken.py", "import no_such_module\n"))
    assert counts(result) == (0, 0, 0)
    assert "cannot import" in result["error"] and "no_such_module" in result["error"]
    result = doctests.run_file(write(tmp_path / "bad.md", ">>> if True:\n...pass\n"))
    assert counts(result) == (0, 0, 0) and "cannot read its examples" in result["error"]


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


@pytest.mark.tools
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


@pytest.mark.tools
def test_run_files_reports_a_failed_subprocess(tmp_path):
    crash = write(tmp_path / "crash.md", ">>> import os; os._exit(3)\n")
    results = doctests.run_files([crash], [BACKEND])
    [entry] = results[BACKEND]
    assert counts(entry) == (0, 0, 0) and entry["file"] == crash
    assert "exited with status 3 before finishing" in entry["error"]
    assert f"{BACKEND}: ERROR" in doctests.format_report(results)


def test_project_docs_pass():
    for path in (ROOT / "docs" / "mixed_precision.md", ROOT / "README.md"):
        result = doctests.run_file(str(path))
        assert result["failed"] == 0, "".join(result["failures"])
        assert result["attempted"] > 10


# Not docs/verifying.md: it shows, in a `markdown` block, examples that must not run.
PLAIN_DOCS = [
    "README.md",
    "docs/distribution.md",
    "docs/mixed_precision.md",
    "docs/rules_and_retargeting.md",
]


@pytest.mark.parametrize("name", PLAIN_DOCS)
def test_project_docs_lose_no_example_to_the_markdown_reader(name):
    import doctest

    text = (ROOT / name).read_text()
    plain = doctest.DocTestParser().get_examples(text)
    read = doctests.read_examples(str(ROOT / name), text)
    assert [e.source for e in read] == [e.source for e in plain]


# --- Docs as real docs write them (issue 14) ---------------------------------

KERAS_DOCSTRINGS = Path(keras.__file__).parent / "src" / "dtype_policies" / "dtype_policy.py"
KERAS_SETUP = "import keras, numpy as np; from keras import ops"


def test_setup_runs_in_the_file_namespace_before_its_examples(tmp_path):
    path = write(tmp_path / "doc.md", ">>> tuple(ops.add(np.ones(2), 1).shape)\n(2,)\n")
    assert "NameError" in doctests.run_file(path)["failures"][0]
    assert counts(doctests.run_file(path, setup=KERAS_SETUP)) == (1, 0, 0)


def test_setup_reaches_every_docstring_of_a_module_and_beats_its_globals(tmp_path):
    path = write(
        tmp_path / "mod.py",
        '''\
        """>>> keras.backend.backend() == BACKEND
        True
        """
        BACKEND = "not set by the setup"


        def f():
            """>>> BACKEND == keras.backend.backend()
            True
            """
        ''',
    )
    result = doctests.run_file(path, setup="import keras; BACKEND = keras.backend.backend()")
    assert counts(result) == (2, 0, 0), result["failures"]


def test_a_setup_that_raises_is_the_file_s_error_not_a_negative_count(tmp_path):
    path = write(tmp_path / "doc.md", ">>> 1\n1\n")
    result = doctests.run_file(path, setup="1 / 0")
    assert counts(result) == (0, 0, 0)
    assert "setup" in result["error"] and "ZeroDivisionError" in result["error"]


def test_plugin_runs_the_examples_with_kpe_installed_and_uninstalls_after(tmp_path):
    path = write(
        tmp_path / "doc.md",
        """\
        >>> import keras, keras_policy_ext as kpe
        >>> kpe.is_installed()
        True
        >>> type(keras.layers.Dense(2, dtype="mixed_float16").dtype_policy) is kpe.DTypePolicy
        True
        """,
    )
    assert counts(doctests.run_file(path, plugin=True)) == (3, 0, 0)
    assert not kpe.is_installed()
    assert counts(doctests.run_file(path)) == (3, 2, 0)


@pytest.mark.parametrize("plugin", [False, True], ids=["keras", "plugin"])
def test_keras_s_own_dtype_policy_docstrings_pass_with_a_setup(plugin):
    bare = doctests.run_file(str(KERAS_DOCSTRINGS))
    assert bare["attempted"] > 0 and bare["failed"] == bare["attempted"], bare["failures"]
    result = doctests.run_file(str(KERAS_DOCSTRINGS), setup=KERAS_SETUP, plugin=plugin)
    assert result["error"] is None
    assert result["attempted"] == bare["attempted"]
    assert result["failed"] == 0, "".join(result["failures"])
    assert keras.config.dtype_policy().name == "float32"
    assert kpe.is_installed() is False


FENCED = """\
>>> 1 + 1
2
>>> print("a\\nb")
a
b"""


def fenced(opening, closing, body=FENCED, indent="", quote=""):
    lines = [opening, *(indent + line for line in body.splitlines()), closing]
    return "".join(f"{quote}{line}\n" for line in lines)


@pytest.mark.parametrize(
    "opening, closing",
    [
        ("```python", "```"),
        ("```py", "```"),
        ("```pycon", "```"),
        ("```doctest", "```"),
        ("```", "```"),
        ("~~~python", "~~~"),
        ("~~~", "~~~"),
        ("````python", "````"),
        ('```python title="example.py" linenums="1"', "```"),
        ("```{code-block} pycon", "```"),
        ("``` {.python}", "```"),
        ("```Python", "```"),
    ],
)
def test_markdown_fences_closing_right_after_the_output(tmp_path, opening, closing):
    text = "Prose.\n\n" + fenced(opening, closing) + "More prose.\n"
    assert counts(doctests.run_file(write(tmp_path / "doc.md", text))) == (2, 0, 0)


def test_a_markdown_fence_left_open_runs_to_the_end(tmp_path):
    text = "```python\n" + FENCED + "\n"
    assert counts(doctests.run_file(write(tmp_path / "doc.md", text))) == (2, 0, 0)


def test_markdown_examples_in_lists(tmp_path):
    text = (
        "1. First:\n\n"
        + fenced("   ```python", "   ```", indent="   ")
        + "2. Second, the fence on the item's own line:\n"
        + "- ```pycon\n  >>> 3 * 3\n  9\n  ```\n"
        + "   - nested:\n\n"
        + fenced("     ~~~py", "     ~~~", body=">>> [1,\n...  2]\n[1, 2]", indent="     ")
    )
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (4, 0, 0), result["failures"]


def test_markdown_examples_in_blockquotes(tmp_path):
    text = (
        "> A quote:\n>\n"
        + fenced("```python", "```", quote="> ")
        + "\n> > nested, bare:\n> >\n> > >>> print('> kept')\n> > > kept\n\n"
        + ">>> print('> not a quote')\n> not a quote\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (4, 0, 0), result["failures"]


def test_markdown_other_languages_do_not_run_bare_examples_do(tmp_path):
    text = (
        "```bash\n>>> never_run\n```\n\n"
        "~~~text\n>>> never_run\n~~~\n\n"
        "````markdown\n```python\n>>> never_run\n```\n````\n\n"
        ">>> 'bare examples run, as in any doctest text'\n"
        "'bare examples run, as in any doctest text'\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (1, 0, 0), result["failures"]


def test_markdown_failures_name_the_file_s_own_line(tmp_path):
    text = "# Title\n\n> ```python\n> >>> 1 + 1\n> 3\n> ```\n"
    [failure] = doctests.run_file(write(tmp_path / "doc.md", text))["failures"]
    assert "line 4, in doc.md" in failure and "Expected:\n    3\nGot:\n    2" in failure


def test_docstrings_with_a_closing_fence_right_after_the_output(tmp_path):
    path = write(
        tmp_path / "mod.py",
        '''\
        def f():
            """Keras writes its examples so.

            ```python
            >>> 1 + 1
            2
            ```

            ```bash
            >>> not_python
            ```
            """
        ''',
    )
    result = doctests.run_file(path)
    assert counts(result) == (1, 0, 0), result["failures"]


@pytest.mark.parametrize(
    "text",
    [
        ".. code-block:: pycon\n\n    >>> 1 + 1\n    2\n",
        ".. code-block:: python\n   :caption: with an option\n\n   >>> 1 + 1\n   2\n",
        ".. code:: py\n\n  >>> 1 + 1\n  2\n",
        ".. sourcecode:: pycon\n\n    >>> 1 + 1\n    2\n",
        ".. doctest::\n\n    >>> 1 + 1\n    2\n",
        "An example::\n\n    >>> 1 + 1\n    2\n",
        "An example:\n\n::\n\n    >>> 1 + 1\n    2\n",
        "- A list item::\n\n      >>> 1 + 1\n      2\n",
        ">>> 1 + 1\n2\n",
    ],
    ids=["code-block-pycon", "code-block-option", "code", "sourcecode", "doctest",
         "literal", "literal-alone", "literal-in-list", "doctest-block"],
)  # fmt: skip
def test_rst_forms(tmp_path, text):
    result = doctests.run_file(write(tmp_path / "doc.rst", "Title\n=====\n\n" + text + "\nEnd.\n"))
    assert counts(result) == (1, 0, 0), result["failures"]


def test_rst_other_languages_do_not_run(tmp_path):
    text = (
        ".. code-block:: bash\n\n    >>> never_run\n\n"
        ".. highlight:: text\n\nShown::\n\n    >>> never_run\n\n"
        ".. highlight:: python\n\nRun::\n\n    >>> 1 + 1\n    2\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.rst", text))
    assert counts(result) == (1, 0, 0), result["failures"]


def test_counts_are_never_negative_a_file_error_is_its_own_field(tmp_path):
    result = doctests.run_file(str(tmp_path / "missing.md"))
    assert counts(result) == (0, 0, 0) and "missing.md" in result["error"]
    report = doctests.format_report({BACKEND: [result]})
    assert "INCOMPLETE: 0 passed, 0 failed, 0 skipped, 1 error (1 file, 1 backend)" in report


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.md", None, "no such file"),
        ("latin1.md", b">>> 'caf\xe9'\n", "not UTF-8"),
        ("syntax.py", b"def f(:\n", "SyntaxError"),
        ("emptydir", "dir", "no .md, .rst or .py file"),
    ],
)
def test_unreadable_files_are_refused_before_any_backend_starts(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        doctests.check_files([str(path)])
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.tools
def test_a_crash_loses_only_its_own_file(tmp_path):
    first = write(tmp_path / "a.md", ">>> 1 + 1\n2\n")
    crash = write(tmp_path / "b.md", ">>> 1\n1\n>>> import os; os._exit(3)\n")
    last = write(tmp_path / "c.md", ">>> 2 + 2\n4\n")
    results = doctests.run_files([first, crash, last], [BACKEND])
    a, b, c = results[BACKEND]
    assert [r["file"] for r in (a, b, c)] == [first, crash, last]
    assert counts(a) == counts(c) == (1, 0, 0) and a["error"] is None is c["error"]
    assert counts(b) == (0, 0, 0) and "exited with status 3" in b["error"]
    assert doctests.status(results) == 2


@pytest.mark.tools
def test_timeout_per_file_stops_a_hung_file_and_names_its_example(tmp_path):
    hang = write(tmp_path / "hang.md", ">>> 1\n1\n>>> while True:\n...     pass\n")
    after = write(tmp_path / "later.md", ">>> 2 + 2\n4\n")
    results = doctests.run_files([hang, after], [BACKEND], timeout=3)
    hung, later = results[BACKEND]
    assert "timed out after 3 s" in hung["error"] and "hang.md[1]" in hung["error"]
    assert counts(later) == (1, 0, 0) and later["error"] is None


@pytest.mark.tools
def test_timeout_names_the_hung_code_block_s_line(tmp_path):
    hang = write(tmp_path / "hang.md", "```python\nx = 1\nwhile True:\n    pass\n```\n")
    [hung] = doctests.run_files([hang], [BACKEND], timeout=3)[BACKEND]
    assert "timed out after 3 s" in hung["error"]
    assert "in the code block at line 4 of hang.md" in hung["error"] or (
        "at line 3 of hang.md" in hung["error"]
    ), hung["error"]


def test_status_and_formats():
    ok = {"file": "a.md", "backend": BACKEND, "attempted": 2, "failed": 0, "skipped": 1,
          "failures": [], "error": None}  # fmt: skip
    bad = {**ok, "file": "b.md", "failed": 1, "failures": ["boom\n"]}
    broken = {**ok, "file": "c.md", "attempted": 0, "skipped": 0, "error": "crashed"}
    assert doctests.status({BACKEND: [ok]}) == 0
    assert doctests.status({BACKEND: [ok, bad]}) == 1
    assert doctests.status({BACKEND: [ok, bad, broken]}) == 2
    assert doctests.status({BACKEND: [{**ok, "attempted": 0}]}) == 2  # no example ran
    data = json.loads(doctests.FORMATS["json"]({BACKEND: [ok, bad]}))
    assert data["status"] == 1 and data["verdict"] == "FAILED"
    assert data["backends"][BACKEND][1]["failures"] == ["boom\n"]
    assert data["totals"] == {"passed": 3, "failed": 1, "skipped": 2, "errors": 0}
    suite = ET.fromstring(doctests.FORMATS["junit"]({BACKEND: [ok, bad, broken]})).find("testsuite")
    assert suite.get("name") == BACKEND
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == ["a.md", "b.md", "c.md"]
    assert suite.find("testcase[@name='b.md']/failure").text == "boom\n"
    assert suite.find("testcase[@name='c.md']/error").get("message") == "crashed"


@pytest.mark.parametrize("library", BACKENDS)
def test_skip_without_a_library_skips_only_where_it_is_not_installed(tmp_path, library):
    from keras_policy_ext.backends import installed_backends

    path = tmp_path / "needs.md"
    # The output is wrong on purpose: run, the example fails; skipped, it cannot.
    path.write_text(f">>> 1 + 1  # doctest: +SKIP_WITHOUT_{library.upper()}\n3\n>>> 2\n2\n")
    result = doctests.run_file(str(path))
    installed = library in installed_backends()
    assert (result["attempted"], result["failed"], result["skipped"]) == (
        (2, 1, 0) if installed else (1, 0, 1)
    ), result


# --- Tutorial-style pages: prompt-less code blocks (issue 22) -------------------

TUTORIAL = """\
# A tutorial

Prose, then code as keras.io writes it:

```python
import keras
import numpy as np

steps = []
```

More prose; the next block sees what the first one defined.

```python
steps.append(len(steps))
x = np.ones((2, 3), "float32")
```

A `>>>` example in the same page shares the namespace, in order:

```pycon
>>> steps
[0]
```

```python
steps.append(keras.ops.convert_to_numpy(keras.ops.sum(x)).item())
assert steps == [0, 6.0], steps
```
"""


def test_prompt_less_blocks_run_in_order_as_one_script_and_count(tmp_path):
    result = doctests.run_file(write(tmp_path / "tutorial.md", TUTORIAL))
    assert result["error"] is None and result["failures"] == []
    assert counts(result) == (4, 0, 0)  # three blocks and one example


def test_a_failing_prompt_less_block_fails_with_the_file_s_line_and_stops_the_script(tmp_path):
    text = TUTORIAL.replace('x = np.ones((2, 3), "float32")', "x = 1 / 0")
    result = doctests.run_file(write(tmp_path / "tutorial.md", text))
    assert counts(result) == (2, 1, 0)  # the two blocks that ran; nothing after the failure
    [failure] = result["failures"]
    assert 'tutorial.md", line 16' in failure and "x = 1 / 0" in failure
    assert "ZeroDivisionError: division by zero" in failure
    assert "2 later examples did not run" in failure


def test_the_tutorial_page_builds_trains_and_saves_under_mixed_precision():
    result = doctests.run_file(str(ROOT / "docs" / "tutorial_mixed_precision.md"))
    assert result["error"] is None and result["failures"] == [], "".join(result["failures"])
    assert counts(result) == (7, 0, 0)  # every block of the page ran


def test_a_prompt_less_block_that_does_not_compile_is_its_failure(tmp_path):
    text = "# A signature, not code\n\n```python\nkpe.Rule(policy, *, layer=None)\n```\n"
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (1, 1, 0) and result["error"] is None
    assert 'doc.md", line 4' in result["failures"][0]
    assert "SyntaxError" in result["failures"][0]


def test_prompt_less_blocks_opt_out_by_info_string_or_html_comment(tmp_path):
    text = (
        "```python notest\nraise RuntimeError('a fragment')\n```\n\n"
        "<!-- skip: next -->\n\n```python\nraise RuntimeError('also not run')\n```\n\n"
        "<!-- skip: next -->\n```pycon\n>>> raise RuntimeError('nor this')\n```\n\n"
        "```python\nran = True\n```\n\n```py\nassert ran\n```\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (2, 0, 0), result["failures"]


def test_a_prompt_less_block_skipped_on_a_backend(tmp_path):
    text = (
        f"```python\n# doctest: +SKIP_{BACKEND.upper()}\nraise RuntimeError\n```\n\n"
        f"```python\n# doctest: +SKIP_{OTHER.upper()}\nran = 1\n```\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.md", text))
    assert counts(result) == (1, 0, 1), result["failures"]


def test_only_python_fences_run_prompt_less(tmp_path):
    text = (
        "```\nnot python: output or a shell line\n```\n\n"
        "```bash\nexit 1\n```\n\n```text\nraise\n```\n\n"
        "```python\nx = 1\n```\n"
    )
    assert counts(doctests.run_file(write(tmp_path / "doc.md", text))) == (1, 0, 0)


def test_rst_prompt_less_code_block_runs_with_the_file_s_line_numbers(tmp_path):
    text = (
        "Title\n=====\n\n.. code-block:: python\n\n   x = 2\n   assert x == 3, x\n\n"
        ".. code-block:: python\n\n   never = 1\n"
    )
    result = doctests.run_file(write(tmp_path / "doc.rst", text))
    assert counts(result) == (1, 1, 0)
    assert 'doc.rst", line 7' in result["failures"][0]
    assert "AssertionError: 2" in result["failures"][0]


def test_prompt_less_fences_in_docstrings_do_not_run(tmp_path):
    path = write(
        tmp_path / "mod.py",
        '''\
        def f():
            """Keras's docstrings show fragments in prompt-less fences.

            ```python
            model.fit(x, y)  # not runnable here
            ```

            >>> 1 + 1
            2
            """
        ''',
    )
    assert counts(doctests.run_file(path)) == (1, 0, 0)


def test_a_page_with_nothing_to_run_is_never_passed(tmp_path):
    nothing = write(tmp_path / "prose.md", "# Prose\n\n```bash\npip install it\n```\n")
    good = write(tmp_path / "good.md", ">>> 1\n1\n")
    result = doctests.run_file(nothing)
    assert counts(result) == (0, 0, 0) and result["examples"] == 0
    results = {BACKEND: [result, doctests.run_file(good)]}
    report = doctests.format_report(results)
    assert f"{BACKEND}: nothing to run" in report and "0 passed" not in report.splitlines()[0]
    assert doctests.status(results) == 2
    assert "nothing to run in prose.md" in doctests.summary(results)
    assert "no >>> example and no ```python block" in doctests.summary(results)


# --- A stand-alone module is imported once, by its own name (issue 22) --------


REGMOD = '''\
"""A stand-alone module whose examples import it by name.

>>> import regmod
>>> isinstance(regmod.Twice(), Twice)
True
>>> regmod.__name__, __name__
('regmod', 'regmod')
"""


class Twice:
    """>>> Twice() is None
    True
    """
'''


def test_a_stand_alone_module_is_imported_once_by_its_own_name(tmp_path):
    path = write(tmp_path / "regmod.py", REGMOD)
    modules, syspath = set(sys.modules), list(sys.path)
    result = doctests.run_file(path)
    assert counts(result) == (4, 1, 0), result["failures"]
    [failure] = result["failures"]
    assert 'regmod.py", line 12, in regmod.Twice' in failure
    assert set(sys.modules) == modules and sys.path == syspath


def test_a_module_shadowed_by_another_of_its_name_runs_under_its_file_s_name(tmp_path):
    path = write(tmp_path / "json.py", '"""\n>>> __name__ == "json"\nFalse\n>>> 1\n2\n"""\n')
    [failure] = doctests.run_file(path)["failures"]
    assert 'json.py", line 4, in json' in failure and "_kpe_doctest" not in failure
