"""Distribution on Keras's torch backend, under kpe policies.

What Keras 3.15.1's torch backend supports for distribution today:

- `keras.distribution` (`list_devices`, `DataParallel`, `ModelParallel`,
  `initialize`): no. The backend has no `distribution_lib` (it is `None` on
  torch), so these raise `AttributeError: 'NoneType' object has no attribute
  ...`; `test_keras_distribution_is_not_there_on_torch` pins that, so the suite
  notices when Keras adds it.
- `Model.fit` across devices or processes: no; the torch trainer has no
  distribution support. (A `DataParallel` given explicit `devices=` builds,
  and `fit` runs in its scope, on one device: the torch backend never reads it.)
- A Keras model inside `torch.nn.parallel.DistributedDataParallel`, trained
  with a hand-written torch loop (Keras's guide "Multi-GPU distributed
  training with PyTorch"): yes, a Keras model is a `torch.nn.Module`. That is
  what is tested here, on CPU, with 2 gloo processes.

`dist_torch.py` runs once, as its own process, and reports; the tests judge
its report. Each scenario (float32, mixed_bfloat16, mixed_float16 with a
`DynamicLossScale`, rules, and a loss scale that starts overflowing) trains
the same model from the same weights on one process with the full batch and
in DDP with half the batch per rank.
"""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from integration.distributed import run_child
from keras_policy_ext.internals import versions

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(
    BACKEND != "torch",
    reason=f"Keras's torch backend: runs in the torch env, not {BACKEND}",
)

# Each scenario's policy per layer: the rules put the normalization and the
# head in float32.
POLICIES = {
    "float32": dict.fromkeys(["hidden", "norm", "head"], "float32"),
    "mixed_bfloat16": dict.fromkeys(["hidden", "norm", "head"], "mixed_bfloat16"),
    "mixed_float16": dict.fromkeys(["hidden", "norm", "head"], "mixed_float16"),
    "rules": {"hidden": "mixed_bfloat16", "norm": "float32", "head": "float32"},
    "loss_scale_overflow": dict.fromkeys(["hidden", "norm", "head"], "mixed_float16"),
}
# DDP against one process: (relative tolerance on the losses, absolute one on
# the final weights). DDP computes the same full-batch gradient, but sums it
# in another order (per half, then the average over the ranks). In float32
# that is about an ulp: measured 9.1e-8 on the losses, 6e-8 on the weights.
# Mixed policies reduce the weight gradients over the batch in the compute
# dtype, where the halves round differently. Measured on the losses (weights):
# mixed_bfloat16 7.5e-4 (2.5e-3), rules 4.4e-4 (2.5e-3), mixed_float16 3.7e-5
# (3.2e-5). The loss tolerances are about half a machine epsilon of the
# compute dtype (bfloat16 7.8e-3, float16 9.8e-4), 5x to 13x what was
# measured, the weight ones 4x to 15x; ranks that did not average their
# gradients are 25% off. (The overflow scenario skips one more step under
# DDP: see the loss-scale test.)
TOLERANCES = {
    "float32": (1e-6, 1e-6),
    "mixed_bfloat16": (4e-3, 1e-2),
    "mixed_float16": (5e-4, 5e-4),
    "rules": (4e-3, 1e-2),
}
SCENARIOS = list(POLICIES)
WORLD_SIZE = 2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist_torch") / "report.json"
    found = run_child("integration.dist_torch", str(out))
    assert sorted(found["scenarios"]) == sorted(SCENARIOS)
    assert found["world_size"] == WORLD_SIZE
    assert all(len(s["ranks"]) == WORLD_SIZE for s in found["scenarios"].values())
    return found


def runs(report: dict, scenario: str) -> dict:
    """The single-process run, each rank's and the reloaded model, by name."""
    found = report["scenarios"][scenario]
    ranks = {f"rank {i}": rank for i, rank in enumerate(found["ranks"])}
    return {"single": found["single"], **ranks, "loaded": found["loaded"]}


def weights(run: dict) -> list[np.ndarray]:
    return [np.asarray(w, np.float32) for w in run["weights"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_layers_keep_their_kpe_policy_and_variable_dtype(report, scenario):
    for run, found in runs(report, scenario).items():
        policies = {name: layer["policy"] for name, layer in found["layers"].items()}
        assert policies == POLICIES[scenario], run
        for name, layer in found["layers"].items():
            assert layer["kpe"], (run, name)
            variable_dtype = kpe.DTypePolicy(layer["policy"]).variable_dtype
            assert variable_dtype == "float32"  # every policy here keeps float32 variables
            dtypes = set(layer["variables"].values())
            assert dtypes == {variable_dtype}, (run, name, layer["variables"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_outputs_are_in_the_heads_compute_dtype(report, scenario):
    expected = kpe.DTypePolicy(POLICIES[scenario]["head"]).compute_dtype
    found = report["scenarios"][scenario]
    assert [r["output_dtype"] for r in [found["single"], *found["ranks"]]] == [expected] * 3


@pytest.mark.parametrize("scenario", list(TOLERANCES))
def test_ddp_trains_as_one_process_on_the_full_batch(report, scenario):
    found = report["scenarios"][scenario]
    single = np.array(found["single"]["losses"])
    # Each rank's loss is the mean over its half: their mean is the full-batch loss.
    ddp = np.mean([rank["losses"] for rank in found["ranks"]], axis=0)
    assert len(single) == report["steps"] and single[-1] < 0.5 * single[0], single
    loss_rtol, weight_atol = TOLERANCES[scenario]
    np.testing.assert_allclose(ddp, single, rtol=loss_rtol, atol=0)
    for a, b in zip(weights(found["ranks"][0]), weights(found["single"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=weight_atol)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rank_ends_with_the_same_parameters(report, scenario):
    first, *others = report["scenarios"][scenario]["ranks"]
    for rank in others:
        for a, b in zip(weights(first), weights(rank), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_ddp_trained_model_round_trips_through_keras_files(report, scenario):
    found = report["scenarios"][scenario]
    trained, loaded = found["ranks"][0], found["loaded"]
    assert loaded["layers"] == trained["layers"]  # policies and variable dtypes
    for a, b in zip(weights(trained), weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_float16_is_loss_scaled_and_every_rank_scales_alike(report, scenario):
    found = report["scenarios"][scenario]
    single, (first, *others) = found["single"], found["ranks"]
    for run in others:  # every rank skips or applies the same steps
        assert (run["loss_scales"], run["loss_scale"]) == (
            first["loss_scales"],
            first["loss_scale"],
        )
    if POLICIES[scenario]["hidden"] != "mixed_float16":
        assert single["loss_scale"] == first["loss_scale"] == {"loss_scale": 1.0}  # no scaling
        return
    assert math.isfinite(first["loss_scale"]["initial"]) and first["loss_scale"]["initial"] > 0
    if scenario == "mixed_float16":  # no step overflowed: the scale doubles every 2 steps
        assert single["loss_scales"] == first["loss_scales"]
        assert single["loss_scales"] == [2.0 ** (15 + (step + 1) // 2) for step in range(6)]
        return
    # Each rank's loss is the mean over its half of the batch, so the float16
    # gradients in its backward pass are WORLD_SIZE times one process's: the
    # scale overflows once more (log2(WORLD_SIZE) halvings) before it settles.
    skipped = single["loss_scale"]["skipped_steps"]
    assert skipped == 3 and first["loss_scale"]["skipped_steps"] == skipped + 1
    assert first["loss_scales"][skipped] == single["loss_scales"][skipped - 1] / WORLD_SIZE
    ddp = np.mean([rank["losses"] for rank in found["ranks"]], axis=0)
    assert ddp[-1] < ddp[0]  # then it trains


@pytest.mark.parametrize(
    "call",
    [
        keras.distribution.list_devices,
        keras.distribution.DataParallel,
        keras.distribution.initialize,
    ],
    ids=lambda f: f.__name__,
)
def test_keras_distribution_is_not_there_on_torch(call):
    assert kpe.internals.backend_distribution_lib() is None
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute"):
        call()


def test_a_data_parallel_given_devices_is_silently_ignored_on_torch():
    """Keras builds it and `fit` in its scope trains, on one device, without a warning.

    Keras 3.8 to 3.14 cannot build it: their `DataParallel.__init__` asks the
    backend's `distribution_lib`, `None` on torch, for `num_processes` (3.15
    guards that call and counts one process).
    """
    if versions.parse(keras.__version__) < (3, 15):
        with pytest.raises(AttributeError, match="num_processes"):
            keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"])
        return
    distribution = keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"])
    with (
        warnings.catch_warnings(),
        distribution.scope(),
        kpe.config.policy_scope("mixed_bfloat16"),
    ):
        warnings.simplefilter("error")
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((4, 2), "float32"), np.ones((4, 1), "float32"), verbose=0)
    kernel = model.layers[0].kernel
    assert kernel.dtype == "float32" and kernel.value.device.index in (None, 0)  # one device
