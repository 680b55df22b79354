"""The public face: names that do what they read as, on every backend.

Each test pins one trap a user could fall into: a context manager that is
truthy by accident, a patched `model.compile` that loses its signature, a
top level that lists the standard library, a name that shadows a builtin.
"""

import builtins
import inspect
import sys
import warnings

import keras
import pytest

import keras_policy_ext as kpe

STDLIB = set(sys.stdlib_module_names) | {"Any", "annotations"}


def test_dir_lists_only_the_public_face():
    names = dir(kpe)
    private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    assert private == []
    assert sorted(set(names) & STDLIB) == []
    assert {"DTypePolicy", "install", "policy_scope", "compile_model", "loss_scale"} <= set(names)
    assert "compile" not in names  # deprecated: reachable, not advertised


def test_policy_scope_is_at_the_top_level():
    assert kpe.policy_scope is kpe.config.policy_scope
    with kpe.policy_scope("mixed_bfloat16"):
        assert keras.layers.Dense(2).dtype_policy.name == "mixed_bfloat16"
    assert "policy_scope" in kpe.__all__


def test_compile_is_renamed_and_the_old_name_warns():
    assert "compile" not in kpe.__all__ and not set(kpe.__all__) & set(dir(builtins))
    with pytest.warns(DeprecationWarning, match=r"kpe\.compile_model"):
        old = kpe.compile
    assert old is kpe.compile_model
    with kpe.policy_scope("mixed_float16"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    kpe.compile_model(model, "sgd", loss="mse")
    assert isinstance(model.optimizer, kpe.LossScaleOptimizer)


def test_installed_is_not_truthy_by_accident():
    with pytest.raises(TypeError, match=r"with kpe\.installed\(\).*kpe\.is_installed\(\)"):
        if kpe.installed():
            pass
    assert not kpe.is_installed()  # the mistaken call installed nothing
    with pytest.raises(TypeError, match="context manager"):
        bool(kpe.installed())
    with kpe.installed():
        assert kpe.is_installed()
    assert not kpe.is_installed()


def test_installed_blocks_still_nest_and_count():
    block = kpe.installed()
    with block:
        with kpe.installed():
            assert kpe.is_installed()
        assert kpe.is_installed()
    assert not kpe.is_installed()


def test_model_compile_keeps_its_signature_and_docstring_under_the_plugin():
    before = inspect.signature(keras.Model.compile)
    doc = keras.Model.compile.__doc__
    with kpe.installed():
        assert inspect.signature(keras.Model.compile) == before
        assert keras.Model.compile.__doc__ == doc
        assert keras.Model.compile.__name__ == "compile"
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        assert model.compiled and model.loss == "mse"
    assert inspect.signature(keras.Model.compile) == before
