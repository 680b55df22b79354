"""`keras-policy-ext info`: the Keras version against the verified range, and each
fix of a Keras defect as `install()` leaves it (applied, skipped or failed)."""

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.cli import main
from keras_policy_ext.internals import fixes as keras_fixes
from keras_policy_ext.internals import versions

STATUSES = ("applied", "skipped", "failed", "not concerned", "pending")


def fix_lines(out):
    lines = out.splitlines()
    start = lines.index("fixes            (as install() leaves them on this backend)")
    return {line.split()[0]: line for line in lines[start + 1 :]}


def test_info_names_the_keras_version_the_range_and_every_fix(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"keras            {keras.__version__}, in the verified range" in out
    assert versions.VERIFIED_RANGE in out
    lines = fix_lines(out)
    assert list(lines) == [fix.name for fix in keras_fixes.FIXES]
    kpe.install()
    try:
        expected = {name: status for name, status, _ in keras_fixes.report()}
    finally:
        kpe.uninstall()
    for name, line in lines.items():
        status = line.strip()[len(name) :].strip()
        assert status.startswith(expected[name]) and expected[name] in STATUSES, line
    assert not kpe.is_installed() and keras_fixes.applied() == ()


def test_info_shows_a_fix_whose_probe_raised_as_failed(monkeypatch, capsys):
    def probe():
        raise AttributeError("a stand-in lacks what this Keras reads")

    raising = keras_fixes.Fix(
        "kpe_test_info_raising_probe",
        issue="none (a test's fix)",
        defect="none",
        cause="none",
        backends=("jax", "torch", "tensorflow"),
        probe=probe,
        targets=(),
    )
    monkeypatch.setattr(keras_fixes, "FIXES", (*keras_fixes.FIXES, raising))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = fix_lines(out)["kpe_test_info_raising_probe"]
    assert "failed" in line and "a stand-in lacks" in line
    assert "warning          keras_policy_ext: the probe of fix" in out


def test_info_says_when_keras_is_outside_the_range(monkeypatch, capsys):
    monkeypatch.setattr(keras, "__version__", "3.7.2")
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    assert "keras            3.7.2, older than the verified range" in out
    assert "plugin           cannot be installed: keras_policy_ext does not support" in out


@pytest.mark.parametrize("version", ["3.16.0", "4.0.0"])
def test_info_warns_about_a_newer_keras(monkeypatch, capsys, version):
    monkeypatch.setattr(keras, "__version__", version)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"keras            {version}, newer than the verified range" in out
