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
    private = [
        n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
    ]
    assert private == []
    assert sorted(set(names) & STDLIB) == []
    assert {"DTypePolicy", "install", "policy_scope", "compile_model", "loss_scale"} <= set(names)
    assert "compile" not in names  # deprecated: reachable, not advertised


def test_dir_of_testing_lists_only_what_it_exports():
    names = set(dir(kpe.testing))
    assert not {n for n in names if n.startswith("_") and not n.endswith("__")}
    assert not names & STDLIB  # STDLIB holds "Any" and "annotations" too
    assert {"check_layer", "assert_conforms", "ZOO", "clean_state"} <= names


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


def public_callables():
    """`(qualified name, object)` for every public function and class users reach."""
    import keras_policy_ext.testing as testing

    found = {
        f"kpe.{n}": getattr(kpe, n) for n in kpe.__all__ if not inspect.ismodule(getattr(kpe, n))
    }
    modules = {
        "config": ["dtype_policy", "set_dtype_policy", "policy_scope"],
        "dtype_policies": ["get", "serialize", "deserialize"],
        "loss_scale": kpe.loss_scale.__all__,
        "testing": [n for n in testing.__all__ if callable(getattr(testing, n))],
        "saving": ["save_model", "load_model", "stored_rules", "rules_of"],
        "models": ["sublayers", "with_float32_outputs"],
        "roles": ["parse_roles", "is_role_spec", "canonical_name"],
    }
    for module, names in modules.items():
        for name in names:
            found[f"kpe.{module}.{name}"] = getattr(getattr(kpe, module), name)
    return sorted(found.items())


@pytest.mark.parametrize("name, value", public_callables(), ids=[n for n, _ in public_callables()])
def test_public_docstrings_are_in_keras_style(name, value):
    """A summary line, `Args:` when it takes arguments, `Returns:` when it returns, an example."""
    doc = inspect.getdoc(value) or ""
    summary = doc.splitlines()[0] if doc else ""
    assert summary.strip() and summary.rstrip().endswith("."), f"{name}: summary line {summary!r}"
    assert ">>>" in doc, f"{name}: no >>> example"
    try:
        parameters = [
            p for p in inspect.signature(value).parameters.values() if p.name not in ("self", "cls")
        ]
    except (TypeError, ValueError):  # a builtin's signature: nothing to document
        parameters = []
    if inspect.isclass(value) and issubclass(value, BaseException):
        parameters = []  # an error's message, as every exception takes
    if parameters:
        # A named tuple's fields are its attributes (mkdocstrings reads `Args:` of a
        # class as its `__init__`'s, which a named tuple's is not).
        section = "\nAttributes:\n" if hasattr(value, "_fields") else "\nArgs:\n"
        assert section in doc, f"{name}: takes {[p.name for p in parameters]}, no {section.strip()}"
    if inspect.isfunction(value):
        returns = inspect.signature(value).return_annotation
        silent = (None, "None", inspect.Signature.empty)
        if returns not in silent and "Iterator" not in str(returns):
            assert "\nReturns:\n" in doc, f"{name}: returns {returns}, no Returns: section"
