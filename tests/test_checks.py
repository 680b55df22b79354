"""The checker's own failure detection: deliberately wrong layers are reported."""

import json
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_policy_ext as kpe
from keras_policy_ext.backends import jax_x64_on
from keras_policy_ext.testing import ConformanceError, assert_conforms, check_layer

BACKEND = keras.backend.backend()
X = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")


class CastsToFloat32(keras.layers.Layer):
    def call(self, x):
        return ops.cast(x, "float32")


class Float32Weights(keras.layers.Layer):
    """Hard-codes float32 variables whatever its policy says."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), dtype="float32", name="w")

    def call(self, x):
        return ops.matmul(x, ops.cast(self.w, self.compute_dtype))


class Raises(keras.layers.Layer):
    def call(self, x):
        raise RuntimeError("deliberately broken")


class MakesNaN(keras.layers.Layer):
    def call(self, x):
        return x * float("nan")


class DriftsInLowPrecision(keras.layers.Layer):
    def call(self, x):
        drift = 0.0 if self.compute_dtype == "float32" else 1.0
        return x + drift


class WrongSymbolicDtype(keras.layers.Layer):
    def call(self, x):
        return x

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, "float32")


class UnusedWeight(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x + 0 * ops.sum(self.w)


def findings(report, check):
    return [f for f in report.findings if f.check == check]


def test_output_cast_to_float32_is_reported_with_everything_named():
    report = check_layer(CastsToFloat32, X, ["float32", "mixed_float16", "bfloat16"])
    assert [c.ok for c in report.cases] == [True, False, False]
    found = findings(report, "output")
    assert {(f.policy, f.expected, f.seen) for f in found} == {
        ("mixed_float16", "float16", "output 0 is float32"),
        ("bfloat16", "bfloat16", "output 0 is float32"),
    }
    assert all(f.layer == "CastsToFloat32" and f.backend == BACKEND for f in found)
    assert f"CastsToFloat32 under kpe 'mixed_float16' on {BACKEND}" in str(found[0])


def test_variables_in_the_wrong_dtype_are_reported():
    report = check_layer(Float32Weights, X, ["float16", "mixed_float16"], train=False)
    assert findings(report, "variable") and all(
        f.policy == "float16" and f.expected == "float16" for f in findings(report, "variable")
    )
    ok = check_layer(Float32Weights, X, ["float16"], train=False, variable_dtypes={"w": "float32"})
    assert findings(ok, "variable") == [], ok


def test_a_layer_that_cannot_run_is_a_finding_not_a_crash():
    report = check_layer(Raises, X, ["float32"])
    (finding,) = report.findings
    assert finding.check == "call"
    assert "RuntimeError: deliberately broken" in finding.seen


def test_non_finite_outputs_are_reported():
    report = check_layer(MakesNaN, X, ["float32"])
    assert [f.check for f in report.findings] == ["finite"]


def test_numerics_against_float32_are_reported_beyond_the_tolerance():
    report = check_layer(DriftsInLowPrecision, X, ["float32", "mixed_bfloat16"])
    (finding,) = report.findings
    assert (finding.check, finding.policy) == ("numerics", "mixed_bfloat16")
    assert finding.expected == "relative error <= 0.08"


def test_symbolic_dtype_disagreeing_with_eager_is_reported():
    report = check_layer(WrongSymbolicDtype, X, ["mixed_bfloat16"])
    assert [(f.check, f.seen) for f in report.findings] == [("symbolic", "float32")]


def test_a_training_step_that_changes_nothing_is_reported():
    report = check_layer(UnusedWeight, X, ["float32"])
    assert [(f.check, f.seen) for f in report.findings] == [
        ("train", "no variable changed in 1 step(s)")
    ]


def float64_really_holds_float64():
    """Measured apart from `validate`: does a float64 Dense kernel hold float64 values?"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns that it truncates: the answer, not news
        layer = keras.layers.Dense(3, dtype="float64")
        layer.build((2, 4))
        return ops.convert_to_numpy(layer.kernel.value).dtype == np.float64


def test_float64_a_backend_cannot_hold_is_refused_under_kpe_and_a_finding_under_keras():
    report = check_layer(
        lambda: keras.layers.Dense(3), X, ["float64"], sources=["kpe", "keras"], train=False
    )
    kpe_case, keras_case = report.cases
    holds = float64_really_holds_float64()
    x64 = jax_x64_on()
    assert holds is not (BACKEND == "jax" and not x64)
    # kpe: refused when the layer is built (plugin installed), with the fix; never a finding.
    assert kpe_case.findings == ()
    assert bool(kpe_case.refused) is (not holds)
    if not holds:
        assert "on the jax backend" in kpe_case.refused
        assert "JAX_ENABLE_X64=1" in kpe_case.refused
        assert "refused:" in str(report)
    # Keras's own policy: what the backend does, reported.
    unsupported = [f for f in keras_case.findings if f.check == "validate"]
    assert bool(unsupported) is (not holds)
    assert keras_case.refused == ""
    if unsupported:
        (finding,) = unsupported
        assert (finding.policy, finding.expected) == ("float64", "a policy this backend supports")
        assert "x64 is disabled" in finding.seen
        seen = {f.seen for f in keras_case.findings if f.check == "variable"}
        assert any("holds float32 (declares float64)" in s for s in seen), seen


@pytest.mark.parametrize(
    "policy", ["float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"]
)
def test_stock_dense_conforms(policy):
    assert check_layer(lambda: keras.layers.Dense(3), X, [policy]).ok


def test_models_and_both_policy_sources():
    def model():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(inputs)))

    report = check_layer(model, X, ["mixed_bfloat16"], sources=("kpe", "keras"))
    assert [c.source for c in report.cases] == ["kpe", "keras"]
    assert report.ok, str(report)


def test_report_is_json_serializable_and_round_trips():
    report = check_layer(CastsToFloat32, X, ["float32", "mixed_float16"])
    data = json.loads(report.to_json())
    assert data["ok"] is False and len(data["cases"]) == 2
    back = kpe.testing.Report.from_dict(data)
    assert back == report


def test_assert_conforms_raises_an_assertion_error_listing_findings():
    with pytest.raises(ConformanceError) as info:
        assert_conforms(CastsToFloat32, X, ["mixed_bfloat16"])
    assert isinstance(info.value, AssertionError)
    assert "CastsToFloat32 under kpe 'mixed_bfloat16'" in str(info.value)
    assert "expected bfloat16, saw output 0 is float32" in str(info.value)
    assert assert_conforms(lambda: keras.layers.Dense(2), X, ["float32"]).ok


def test_checks_leave_global_state_alone():
    kpe.config.set_dtype_policy("mixed_float16")
    check_layer(CastsToFloat32, X, ["bfloat16", "float16"])
    assert kpe.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "mixed_float16"


def test_a_model_checked_under_rules_is_judged_per_layer():
    def model():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3)(inputs)
        return keras.Model(inputs, keras.layers.LayerNormalization()(hidden))

    rules = kpe.rules.FLOAT32_NUMERICS
    ruled = check_layer(model, X, ["mixed_float16", "mixed_bfloat16"], rules=rules)
    assert ruled.ok, str(ruled)

    # The same model whose norm is float32 by hand, judged by the scope's policy alone:
    def by_hand():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3)(inputs)
        return keras.Model(inputs, keras.layers.LayerNormalization(dtype="float32")(hidden))

    plain = check_layer(by_hand, X, ["mixed_float16"], train=False)
    assert [(f.check, f.expected, f.seen) for f in plain.findings] == [
        ("output", "float16", "output 0 is float32")
    ]
    assert not kpe.is_installed()  # the check put the plugin back as it was


class _Float32Head(keras.layers.Layer):
    """Returns float32 whatever its policy, as keras-hub's heads do."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")

    def call(self, x):
        return ops.cast(ops.matmul(x, self.w), "float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float16"])
def test_a_deliberate_float32_head_is_held_to_its_own_dtype(policy):
    kept = check_layer(_Float32Head, X, [policy], sources=["kpe", "keras"], output_dtype="float32")
    assert kept.ok, str(kept)
    # Held to the compute dtype instead, its float32 output is a finding, eager and symbolic
    # agreeing (float32 both).
    report = check_layer(_Float32Head, X, [policy], train=False)
    assert [(f.check, f.expected) for f in report.findings] == [
        ("output", kpe.DTypePolicy(policy).compute_dtype)
    ]


class _DeclaresInt64(keras.layers.Layer):
    """Returns int32 eagerly and declares int64 symbolically (JAX's Hashing, stock)."""

    def call(self, x):
        return ops.cast(x, "int32")

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, "int64")


def test_integer_outputs_are_checked_eager_against_symbolic():
    report = check_layer(_DeclaresInt64, np.ones((2, 3), "int32"), ["mixed_float16"])
    assert [(f.check, f.seen) for f in report.findings] == [("symbolic", "int64")]
    assert "KerasTensor 0 is int32, as eagerly" in report.findings[0].expected


def test_zoo_layers_a_backend_lacks_are_noted_not_checked():
    from keras_policy_ext.cli.matrix import check_here

    events = []
    check_here(["TorchModuleWrapper"], True, [], ["float32"], ["kpe"], events.append)
    cases = [e["case"] for e in events if "case" in e]
    notes = [e["note"] for e in events if "note" in e]
    if BACKEND == "torch":
        assert [(c["layer"], list(c["findings"])) for c in cases] == [("TorchModuleWrapper", [])]
        assert notes == []
    else:
        assert cases == []
        assert notes == [f"TorchModuleWrapper runs on torch only: not checked on {BACKEND}"]
