"""`keras-policy-ext doctest`: setup, plugin, refused files, isolation, timeouts, formats."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import pytest

BACKEND = keras.backend.backend()
KERAS_DOCSTRINGS = Path(keras.__file__).parent / "src" / "dtype_policies" / "dtype_policy.py"
KERAS_SETUP = "import keras, numpy as np; from keras import ops"


def doctest_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", "doctest", "--backends", BACKEND, *args],
        capture_output=True, text=True, env=dict(os.environ), timeout=900,
    )  # fmt: skip


@pytest.mark.parametrize("plugin", [[], ["--plugin"]], ids=["keras", "plugin"])
def test_keras_s_own_docstrings_pass_with_setup(plugin):
    bare = doctest_cli(str(KERAS_DOCSTRINGS))
    assert bare.returncode == 1 and "NameError: name 'keras' is not defined" in bare.stdout
    result = doctest_cli("--setup", KERAS_SETUP, *plugin, str(KERAS_DOCSTRINGS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{BACKEND}: 7 passed" in result.stdout
    assert result.stdout.rstrip().endswith("OK: 7 passed, 0 failed, 0 skipped (1 file, 1 backend)")


@pytest.mark.tools
def test_unreadable_files_exit_2_before_any_backend_starts(tmp_path):
    marker = tmp_path / "examples-ran"
    good = tmp_path / "good.md"
    good.write_text(f">>> open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "latin1.md").write_bytes(b">>> 'caf\xe9'\n")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    result = doctest_cli(str(good), str(tmp_path / "missing.md"), str(tmp_path / "latin1.md"),
                         str(tmp_path / "syntax.py"))  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert "cannot run the examples of 3 files" in result.stderr
    for name, why in [("missing.md", "no such file"), ("latin1.md", "not UTF-8 text (byte 0xe9"),
                      ("syntax.py", "SyntaxError")]:  # fmt: skip
        assert f"{tmp_path / name}: {why}" in result.stderr
    assert not marker.exists()  # no backend ran the good file either


@pytest.mark.tools
def test_usage_errors_exit_2(tmp_path):
    good = tmp_path / "good.md"
    good.write_text(">>> 1\n1\n")
    for args, message in [
        (["--setup", "import keras", "--setup", "1 +"], "--setup does not compile"),
        (["--timeout", "0"], "expected a number of seconds > 0"),
        (["--format", "html"], "invalid choice: 'html'"),
    ]:
        result = doctest_cli(*args, str(good))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


@pytest.mark.tools
def test_a_crash_and_a_hang_lose_only_their_own_file(tmp_path):
    files = {
        "a_crash.md": ">>> import os; os._exit(7)\n",
        "b_hang.md": ">>> while True:\n...     pass\n",
        "c_good.md": ">>> 2 + 2\n4\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = doctest_cli("--timeout", "5", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(l.startswith(str(tmp_path / "c_good.md")) and "1 passed" in l for l in lines)
    assert "exited with status 7" in result.stdout
    assert "timed out after 5 s (--timeout) in example b_hang.md[0]" in result.stdout
    assert "INCOMPLETE: 1 passed, 0 failed, 0 skipped, 2 errors (3 files, 1 backend)" in lines


@pytest.mark.tools
def test_json_junit_and_output(tmp_path):
    (tmp_path / "ok.md").write_text(">>> 1 + 1\n2\n")
    (tmp_path / "bad.md").write_text(">>> 1 + 1\n3\n")
    paths = [str(tmp_path / "ok.md"), str(tmp_path / "bad.md")]
    report = tmp_path / "report.json"
    result = doctest_cli("--format", "json", "--output", str(report), *paths)
    assert result.returncode == 1
    assert result.stdout.strip() == "FAILED: 1 passed, 1 failed, 0 skipped (2 files, 1 backend)"
    data = json.loads(report.read_text())
    assert data["status"] == 1 and data["totals"]["failed"] == 1
    assert [r["file"] for r in data["backends"][BACKEND]] == paths
    result = doctest_cli("--format", "junit", *paths)
    suite = ET.fromstring(result.stdout).find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == (BACKEND, "2", "1")
    assert "Expected:\n    3\nGot:\n    2" in suite.find("testcase/failure").text


@pytest.mark.tools
def test_backends_all_in_doctest_and_check(tmp_path):
    from keras_policy_ext.backends import installed_backends

    good = tmp_path / "good.md"
    good.write_text(">>> 1 + 1\n2\n")
    result = subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", "doctest", "--backends", "all", "--format",
         "json", str(good)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(json.loads(result.stdout)["backends"]) == installed_backends()
    # `check` parses it the same way: the run stops at the next usage error, no longer at it.
    result = subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", "check", "--backends", "all", "--layers",
         "NoSuchLayer"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 2 and "no zoo layer matches NoSuchLayer" in result.stderr
    assert "all" not in result.stderr.split("no zoo layer")[0]


@pytest.mark.tools
def test_format_markdown(tmp_path):
    (tmp_path / "ok.md").write_text(">>> 1 + 1\n2\n")
    (tmp_path / "bad.md").write_text("```python\nraise ValueError('boom')\n```\n")
    result = doctest_cli("--format", "markdown", str(tmp_path / "ok.md"), str(tmp_path / "bad.md"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"| file | {BACKEND} |" and lines[1] == "|---|---|"
    assert f"| {tmp_path / 'ok.md'} | 1 passed |" in lines
    assert f"| {tmp_path / 'bad.md'} | 1 FAILED of 1 |" in lines
    assert "ValueError: boom" in result.stdout
    assert lines[-1] == "**FAILED**: 1 passed, 1 failed, 0 skipped (2 files, 1 backend)"
