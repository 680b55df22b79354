"""`kpe.install()`'s contract with the Keras it patches: all or nothing, loud when
Keras changes, no trace in Keras's automatic names.

Every attribute the plugin or a fix for this backend may patch is snapshotted
before and compared after: "Keras as before" means each of them is the very
object it was.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext import internals, plugin
from keras_policy_ext.internals import fixes as keras_fixes
from keras_policy_ext.internals import versions

DENSE = "keras.layers.Dense"


def _every_patchable():
    """(owner path, attr) of everything install() may patch, with extras named."""
    found = [(path, attr) for path, attr, *_ in plugin.PATCHES.targets]
    for fix in keras_fixes.FIXES:
        found += [(t.owner, t.attr) for t in fix.targets]
    return found + [(DENSE, "compute_output_shape"), (DENSE, "get_config")]


def snapshot():
    state = {}
    for path, attr in _every_patchable():
        owner = internals.resolve(path)
        if owner is not None:
            state[(path, attr)] = vars(owner).get(attr, "<not its own>")
    return state


def assert_keras_as(before):
    after = snapshot()
    changed = [f"{p}.{a}" for p, a in before if after[(p, a)] is not before[(p, a)]]
    assert changed == [], f"left patched: {changed}"
    assert not kpe.is_installed()
    assert keras_fixes.applied() == ()


@pytest.fixture
def clean():
    """The plugin uninstalled and every fix reverted after the test (a test that
    monkeypatches the fix table asks for `monkeypatch` first, so that this runs
    while its fix is in the table; one that patches Keras, after)."""
    before = snapshot()
    yield before
    kpe.uninstall()
    keras_fixes.revert_all()
    assert_keras_as(before)


def _passing(original):
    def replacement(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    return replacement


def _failing(original):
    raise RuntimeError("kpe test: this replacement cannot be made")


def _test_fix(name, probe, targets):
    return keras_fixes.Fix(
        name,
        issue="none (a test's fix)",
        defect="none",
        cause="none",
        backends=("jax", "torch", "tensorflow"),
        probe=probe,
        targets=targets,
    )


@pytest.fixture
def half_failing_fix(monkeypatch):
    """A last fix whose first target patches and whose second fails."""
    half = _test_fix(
        "kpe_test_half_failing",
        lambda: True,
        (
            keras_fixes.Target(DENSE, "compute_output_shape", _passing),
            keras_fixes.Target(DENSE, "get_config", _failing),
        ),
    )
    monkeypatch.setattr(keras_fixes, "FIXES", (*keras_fixes.FIXES, half))
    return half


def test_a_fix_failing_half_way_leaves_keras_as_before(half_failing_fix, clean):
    """Its first target is patched, its second fails: every fix applied before it
    (the real ones this backend needs) and its own first patch are reverted."""
    with pytest.raises(RuntimeError, match="cannot be made"):
        kpe.install()
    assert_keras_as(clean)
    with pytest.raises(RuntimeError, match="cannot be made"), kpe.installed():
        pass
    assert_keras_as(clean)


def test_apply_all_is_all_or_nothing(half_failing_fix, clean):
    with pytest.raises(RuntimeError, match="cannot be made"):
        keras_fixes.apply_all(force=True)
    assert_keras_as(clean)


def test_a_raising_probe_warns_naming_its_fix_and_the_fix_is_applied(monkeypatch, clean):
    def probe():
        raise AttributeError("'_StandIn' object has no attribute 'new_in_keras'")

    raising = _test_fix(
        "kpe_test_raising_probe",
        probe,
        (keras_fixes.Target(DENSE, "compute_output_shape", _passing),),
    )
    monkeypatch.setattr(keras_fixes, "FIXES", (*keras_fixes.FIXES, raising))
    with pytest.warns(RuntimeWarning, match="kpe_test_raising_probe.*new_in_keras"):
        kpe.install()
    assert kpe.is_installed()
    assert "kpe_test_raising_probe" in keras_fixes.applied()
    status = {name: (s, detail) for name, s, detail in keras_fixes.report()}
    assert status["kpe_test_raising_probe"][0] == "failed"
    assert "new_in_keras" in status["kpe_test_raising_probe"][1]


def _renamed(self, inputs, weights=None):  # Keras's `_encode` with a parameter renamed
    return None


def test_a_changed_signature_is_a_clear_error_at_install(clean, monkeypatch):
    owner = internals.resolve("keras.src.layers.preprocessing.category_encoding.CategoryEncoding")
    monkeypatch.setattr(owner, "_encode", _renamed)
    before = snapshot()
    with pytest.raises(RuntimeError) as info:
        kpe.install()
    message = str(info.value)
    assert "CategoryEncoding._encode" in message and "count_weights" in message
    assert keras.__version__ in message and versions.VERIFIED_RANGE in message
    assert_keras_as(before)


def test_a_changed_signature_of_a_plugin_target_is_a_clear_error(clean, monkeypatch):
    owner = internals.resolve("keras.src.dtype_policies.dtype_policy")
    monkeypatch.setattr(owner, "set_dtype_policy", lambda dtype_policy: None)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"dtype_policy\.set_dtype_policy has parameters"):
        kpe.install()
    assert_keras_as(before)


def test_a_newer_keras_warns_once_naming_the_range(clean, monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.warns(RuntimeWarning, match=r"verified on keras>=3\.8,<3\.16.*3\.99\.0"):
        kpe.install()
    assert kpe.is_installed()
    kpe.uninstall()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kpe.install()
    assert [w for w in caught if "3.99.0" in str(w.message)] == []


def test_an_older_keras_is_refused_with_keras_as_before(clean, monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.7.0")
    with pytest.raises(RuntimeError, match=r"Keras 3\.7\.0: it needs keras>=3\.8"):
        kpe.install()
    assert_keras_as(clean)


def test_the_declared_range_is_the_verified_range():
    import tomllib

    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    oldest = ".".join(map(str, versions.OLDEST))
    assert f"keras>={oldest},<4" in dependencies
    assert versions.standing(keras.__version__) == "verified"


NAMES = (
    "import json, keras{install}\n"
    "print(json.dumps([keras.optimizers.SGD().name, keras.optimizers.Adam().name,"
    " keras.Variable(1.0).name, keras.layers.Dense(2).name]))"
)


def _names(install):
    code = NAMES.format(install="; import keras_policy_ext as kpe; kpe.install()" * install)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_install_leaves_keras_s_automatic_names_as_they_were():
    """A user's first SGD() after install() is named as without kpe ('sgd' on 3.15)."""
    assert _names(install=True) == _names(install=False)
