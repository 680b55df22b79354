"""Loading a file never imports a module the file names; corrupt side files are clear errors.

A payload module, written here into a temporary directory on `sys.path`
and never imported before, writes a marker file when it is imported: the
marker must not appear however a crafted file names it.
"""

import json
import sys
import types
import uuid
import zipfile

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.rules import Rule, Rules
from keras_policy_ext.saving import RULES_FILE

RULES = kpe.rules.FLOAT32_NUMERICS


@keras.saving.register_keras_serializable(package="kpe_tests")
class RegisteredDense(keras.layers.Dense):
    """A registered layer class: rules name it by its registered name."""


# Classes whose module does not exist: resolving their old `module:Qualname`
# path can only succeed by looking them up, never by importing.
NEVER_IMPORTED = "kpe_tests_never_imported"
RegisteredElsewhere = keras.saving.register_keras_serializable(package="kpe_tests")(
    type("RegisteredElsewhere", (keras.layers.Layer,), {"__module__": NEVER_IMPORTED})
)
Unregistered = type("Unregistered", (keras.layers.Layer,), {"__module__": NEVER_IMPORTED})


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A module that writes `marker` when imported, importable, not yet imported."""
    name = f"kpe_payload_{uuid.uuid4().hex}"
    source, marker = tmp_path / "payload", tmp_path / "payload_was_imported"
    source.mkdir()
    (source / f"{name}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the payload ran')\n"
        "import keras\n\n\n"
        "class Thing(keras.layers.Layer):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(source))
    assert name not in sys.modules
    yield types.SimpleNamespace(module=name, path=f"{name}:Thing", marker=marker)
    sys.modules.pop(name, None)


def saved_under_rules(tmp_path, name="model.keras"):
    """A real model built under rules, saved with `kpe.save_model`."""
    with kpe.installed(), kpe.config.policy_scope("mixed_bfloat16", rules=RULES):
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3), keras.layers.LayerNormalization()]
        )
    path = tmp_path / name
    kpe.save_model(model, path)
    return model, path


def rewrite(path, entries):
    """Rewrites the zip at `path` with `entries` (name -> bytes) replaced."""
    with zipfile.ZipFile(path) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    contents.update(entries)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def side_file(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(RULES_FILE))


def with_side_file(path, stored):
    rewrite(path, {RULES_FILE: json.dumps(stored).encode()})


def words_in(error, words):
    message = str(error.value)
    missing = [w for w in words if w not in message]
    assert not missing, (missing, message)


# -- Security: nothing a file names gets imported ------------------------------------------------


def test_kpe_load_model_never_imports_a_module_the_side_file_names(payload, tmp_path):
    _, path = saved_under_rules(tmp_path)
    stored = side_file(path)
    stored["rules"]["rules"][0]["layer"] = payload.path
    with_side_file(path, stored)

    with pytest.raises(ValueError) as raised:
        kpe.load_model(path)
    assert not payload.marker.exists() and payload.module not in sys.modules
    words_in(
        raised,
        [
            str(path),
            RULES_FILE,
            "rules[0]",
            repr(payload.path),
            "register_keras_serializable",
            "custom_objects",
            "safe_mode=False",
        ],
    )
    for load in (kpe.saving.stored_rules, lambda p: Rules.from_config(side_file(p)["rules"])):
        with pytest.raises(ValueError):
            load(path)
        assert not payload.marker.exists() and payload.module not in sys.modules


def test_keras_load_model_never_imports_a_module_a_layer_dtype_names(payload, tmp_path):
    """`Rules` is registered with Keras: a layer's `dtype` config can name it."""
    _, path = saved_under_rules(tmp_path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    rules = Rules([Rule("float32", layer=keras.layers.Dense)])
    crafted = keras.saving.serialize_keras_object(rules)
    crafted["config"]["rules"][0]["layer"] = payload.path
    dense = next(l for l in config["config"]["layers"] if l["class_name"] == "Dense")
    dense["config"]["dtype"] = crafted
    rewrite(path, {"config.json": json.dumps(config).encode()})

    for load in (keras.saving.load_model, kpe.load_model):
        with pytest.raises((ValueError, TypeError)) as raised:
            load(path)
        assert not payload.marker.exists() and payload.module not in sys.modules
        assert payload.path in str(raised.value)
    with pytest.raises(ValueError):
        keras.saving.deserialize_keras_object(crafted)
    assert not payload.marker.exists() and payload.module not in sys.modules


def test_safe_mode_false_trusts_the_file_and_imports_what_it_names(payload, tmp_path):
    """As with Keras's `safe_mode=False` (lambdas), the user trusts the file: code may run."""
    model, path = saved_under_rules(tmp_path)
    stored = side_file(path)
    stored["rules"]["rules"][0]["layer"] = payload.path
    with_side_file(path, stored)

    loaded = kpe.load_model(path, safe_mode=False)
    assert payload.marker.exists()
    assert kpe.saving.rules_of(loaded).rules[0].layer is sys.modules[payload.module].Thing
    x = np.ones((2, 4), "float32")
    # The payload's class took the LayerNormalization rule's place, so the loaded
    # LayerNormalization computes under the default, mixed_bfloat16: the same
    # outputs within bfloat16's precision (Keras 3.15 happens to round them alike,
    # Keras 3.8 does not).
    assert loaded.layers[-1].dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(loaded(x), "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32")),
        rtol=1e-2,
        atol=1e-2,
    )


# -- How rules name layer classes ----------------------------------------------------------------


def test_rules_name_layer_classes_as_keras_serializes_them():
    rules = Rules(
        [
            Rule("float16", layer=RegisteredDense),
            Rule("float32", layer=keras.layers.Dense),
            Rule("float32", layer=keras.Model),
        ],
        default="mixed_bfloat16",
    )
    config = rules.get_config()
    assert [r["layer"] for r in config["rules"]] == [
        "kpe_tests>RegisteredDense",
        "keras.layers.Dense",
        "keras.Model",
    ]
    back = Rules.from_config(json.loads(json.dumps(config)))
    assert back == rules
    assert [r.layer for r in back.rules] == [RegisteredDense, keras.layers.Dense, keras.Model]


def test_old_module_paths_resolve_by_lookup_without_importing():
    """Files older versions wrote name classes `module:Qualname`."""
    config = {
        "rules": [
            {"policy": "float32", "layer": f"{NEVER_IMPORTED}:RegisteredElsewhere"},
            {
                "policy": "float32",
                "layer": "keras.src.layers.normalization.layer_normalization:LayerNormalization",
            },
            {"policy": "float16", "layer": f"{__name__}:RegisteredDense"},
        ],
        "default": None,
    }
    rules = Rules.from_config(config)
    assert [r.layer for r in rules.rules] == [
        RegisteredElsewhere,
        keras.layers.LayerNormalization,
        RegisteredDense,
    ]
    assert NEVER_IMPORTED not in sys.modules


def test_an_unregistered_class_loads_through_custom_objects(tmp_path):
    with (
        kpe.installed(),
        kpe.config.policy_scope(
            "mixed_bfloat16", rules=Rules([Rule("float32", layer=Unregistered)])
        ),
    ):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "model.keras"
    kpe.save_model(model, path)
    assert side_file(path)["rules"]["rules"][0]["layer"] == f"{NEVER_IMPORTED}:Unregistered"

    with pytest.raises(ValueError) as raised:
        kpe.load_model(path)
    words_in(raised, [f"{NEVER_IMPORTED}:Unregistered", "rules[0]", "custom_objects"])
    for loaded in (
        kpe.load_model(path, custom_objects={"Unregistered": Unregistered}),
        kpe.saving.stored_rules(path, custom_objects={"Unregistered": Unregistered}),
    ):
        rules = loaded if isinstance(loaded, Rules) else kpe.saving.rules_of(loaded)
        assert rules.rules[0].layer is Unregistered
    with keras.saving.custom_object_scope({"Unregistered": Unregistered}):
        assert Rules.from_config(side_file(path)["rules"]).rules[0].layer is Unregistered
    assert NEVER_IMPORTED not in sys.modules


# -- Corrupt side files --------------------------------------------------------------------------

GOOD_RULE = {"policy": "float32", "layer": "keras.layers.LayerNormalization"}


@pytest.mark.parametrize(
    "stored, entry",
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "a JSON object"),
        ({"keep": []}, "'rules'"),
        ({"rules": [GOOD_RULE]}, "'rules'"),
        ({"rules": {"default": None}}, "rules.rules"),
        ({"rules": {"rules": {"0": GOOD_RULE}}}, "rules.rules"),
        ({"rules": {"rules": ["float32"]}}, "rules.rules[0]"),
        ({"rules": {"rules": [{"layer": "keras.layers.Dense"}]}}, "rules.rules[0]"),
        ({"rules": {"rules": [GOOD_RULE, {"policy": "float33", "name": "x"}]}}, "rules.rules[1]"),
        ({"rules": {"rules": [{"policy": "float32", "layer": 5}]}}, "rules.rules[0]"),
        ({"rules": {"rules": [{"policy": "float32", "layer": "keras.layers.Nope"}]}}, "rules[0]"),
        ({"rules": {"rules": [{"policy": "float32", "name": {"glob": "a", "regex": "b"}}]}}, "[0]"),
        ({"rules": {"rules": [{"policy": "float32", "path": {"regex": "("}}]}}, "rules.rules[0]"),
        ({"rules": {"rules": [{"policy": "float32", "path": ["a"]}]}}, "rules.rules[0]"),
        ({"rules": {"rules": [GOOD_RULE, GOOD_RULE]}}, "rules.rules"),
        ({"rules": {"rules": [GOOD_RULE], "default": "nope"}}, "rules.default"),
        ({"rules": {"rules": [GOOD_RULE]}, "keep": "dense"}, "'keep'"),
        ({"rules": {"rules": [GOOD_RULE]}, "keep": [1]}, "'keep'"),
    ],
)
def test_a_corrupt_side_file_is_a_value_error_naming_the_file_and_the_entry(
    stored, entry, tmp_path
):
    _, path = saved_under_rules(tmp_path)
    data = stored if isinstance(stored, bytes) else json.dumps(stored).encode()
    rewrite(path, {RULES_FILE: data})
    for load in (kpe.load_model, kpe.saving.stored_rules):
        with pytest.raises(ValueError) as raised:
            load(path)
        words_in(raised, [str(path), RULES_FILE, entry])
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")
    assert not kpe.is_installed()


# -- Other formats -------------------------------------------------------------------------------


def test_an_h5_file_keras_can_load_loads_through_kpe(tmp_path):
    with kpe.config.policy_scope("mixed_bfloat16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "model.h5"
    model.save(path)
    assert not zipfile.is_zipfile(path)
    x = np.ones((2, 4), "float32")
    for loaded in (kpe.load_model(path), kpe.load_model(path, "float32")):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras.ops.cast(loaded(x), "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32")),
            rtol=1e-2,
            atol=1e-2,
        )
    assert kpe.saving.stored_rules(path) is None


def test_rules_need_a_keras_file(tmp_path):
    model, _ = saved_under_rules(tmp_path)
    path = tmp_path / "model.h5"
    with pytest.raises(ValueError) as raised:
        kpe.save_model(model, path)
    words_in(raised, [str(path), ".keras"])
    assert not path.exists()


# -- Bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [5, ["float32"], {"name": "float32"}])
def test_a_bad_policy_argument_of_load_model_is_a_type_error(policy, tmp_path):
    _, path = saved_under_rules(tmp_path)
    with pytest.raises(TypeError) as raised:
        kpe.load_model(path, policy)
    words_in(raised, [f"policy={policy!r}", "Rules"])
    with pytest.raises(ValueError, match="float33"):
        kpe.load_model(path, "float33")
