"""The package's shape: layers without circles, one home for Keras internals, a cheap import.

Read from the source with `ast` (nothing is imported), plus two fresh
processes for what importing the package and asking its command load.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGE = ROOT / "keras_policy_ext"

# Each module may import only modules of a lower layer (docs/development.md: Architecture).
LAYERS = {
    "__init__": 0,  # lazy: names load their modules on first use
    "backends": 0,
    "internals.versions": -1,  # the verified Keras range: below everything
    "internals": 0,
    "internals.isolation": -1,  # seeds and names for one block: below everything
    "internals.fixes": 1,  # recognises kpe's policies by their module, unimported
    "roles": 0,
    "loss_scale.values": 0,
    "loss_scale": 1,
    "testing": 0,  # lazy, like the top level
    "testing.zoo": 0,
    "cli.quiet": 0,
    "cli.docsource": 0,
    "_state": 1,
    "testing.multibackend": 1,
    "policy": 2,
    "rules": 3,
    "models": 3,
    "config": 4,
    "dtype_policies": 5,
    "mixed_precision": 5,
    "loss_scale.optimizer": 6,
    "validation": 6,
    "plugin": 7,
    "retargeting": 8,
    "testing.checks": 8,
    "testing.state": 8,
    "saving": 9,
    "testing.pytest_plugin": 9,
    "cli.runner": 10,
    "cli.matrix": 11,
    "cli.doctests": 11,
    "cli.formats": 12,
    "cli": 13,
    "__main__": 14,
}
# Modules that must import no Keras (nor a backend) when they load.
KERAS_FREE = (
    "__init__", "__main__", "backends", "roles", "testing", "cli", "cli.quiet", "cli.runner",
    "cli.docsource", "cli.doctests", "testing.multibackend", "testing.pytest_plugin",
)  # fmt: skip
# Keras internals: only keras_policy_ext/internals/ touches them.
KERAS_PRIVATE_ATTRIBUTES = {
    "_flatten_layers", "_getframe", "f_locals", "__code__", "_name", "_compute_dtype",
    "_variable_dtype", "_quantization_mode", "_layers", "_tracker",
}  # fmt: skip


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def kpe_imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """`(kpe module, names imported from it)` for every import, functions' included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_policy_ext"):
            base = node.module[len("keras_policy_ext") :].lstrip(".")
            names = [a.name for a in node.names]
            if base:
                found.append((base, names))
            else:  # `from keras_policy_ext import config, rules`: modules
                found += [(name, []) for name in names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name.removeprefix("keras_policy_ext."), [])
                for a in node.names
                if a.name.startswith("keras_policy_ext.")
            ]
    return found


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYERS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_import_only_lower_layers(name):
    for imported, _ in kpe_imports(TREES[name]):
        assert imported in LAYERS, f"{name} imports {imported}, which has no layer"
        assert LAYERS[imported] < LAYERS[name], (
            f"{name} (layer {LAYERS[name]}) imports {imported} (layer {LAYERS[imported]})"
        )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_s_private_names(name):
    tree = TREES[name]
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_policy_ext"):
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{name} imports {alias.name}"
                aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases | {"kpe"}
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            pytest.fail(f"{name} line {node.lineno}: {node.value.id}.{node.attr}")


def keras_internals_used(tree: ast.AST) -> list[str]:
    """`keras.src` imports or attributes, and Keras's private attributes, with line numbers."""
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            used.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            used += [f"line {node.lineno}: import {a.name}" for a in node.names if ".src" in a.name]
        elif isinstance(node, ast.Attribute) and (
            node.attr in KERAS_PRIVATE_ATTRIBUTES
            or (
                node.attr == "src" and isinstance(node.value, ast.Name) and node.value.id == "keras"
            )
        ):
            owner = node.value.id if isinstance(node.value, ast.Name) else "..."
            if owner not in ("self", "cls"):
                used.append(f"line {node.lineno}: {owner}.{node.attr}")
    return used


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] != "internals"))
def test_only_the_internals_module_touches_keras_internals(name):
    assert keras_internals_used(TREES[name]) == []


@pytest.mark.parametrize(
    "path", sorted([*ROOT.glob("tests/*.py"), *ROOT.glob("integration/*.py")]), ids=str
)
def test_tests_use_the_internals_module_not_keras_s_privates(path):
    assert keras_internals_used(ast.parse(path.read_text())) == []


@pytest.mark.parametrize("name", KERAS_FREE)
def test_keras_free_modules_import_no_keras_when_they_load(name):
    top_level = [
        alias.name.split(".")[0]
        for node in TREES[name].body
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [
        (node.module or "").split(".")[0]
        for node in TREES[name].body
        if isinstance(node, ast.ImportFrom)
    ]
    assert not {"keras", "tensorflow", "jax", "torch", "numpy"} & set(top_level)


HEAVY = ("keras", "tensorflow", "jax", "torch")


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh process has loaded after running `code`."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_import_keras_policy_ext_loads_no_keras_until_used():
    assert loaded_after("import keras_policy_ext, keras_policy_ext.testing") == []
    assert "keras" in loaded_after("import keras_policy_ext as kpe; kpe.DTypePolicy")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["check", "--help"]], ids=str)
def test_the_command_answers_version_and_help_without_keras(argv):
    code = (
        "import sys\nfrom keras_policy_ext.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    assert loaded_after(code) == []


def test_imported_after_keras_kpe_registers_its_serializable_classes():
    code = (
        "import keras, keras_policy_ext\n"
        "assert keras.saving.get_registered_object('keras_policy_ext>DTypePolicy')\n"
        "assert keras.saving.get_registered_object('keras_policy_ext>Rules')\n"
        "assert keras.saving.get_registered_object('keras_policy_ext>LossScaleOptimizer')"
    )
    assert "keras" in loaded_after(code)


def test_public_face():
    import keras_policy_ext as kpe

    assert "compile" not in kpe.__all__  # a builtin's name (a deprecated alias of compile_model)
    for name in kpe.__all__:
        value = getattr(kpe, name)
        assert value.__doc__ and ">>>" in value.__doc__, name
    assert callable(kpe.compile_model) and kpe.FloatDTypePolicy is kpe.DTypePolicy
