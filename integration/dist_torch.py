"""A Keras model under kpe policies in torch `DistributedDataParallel`, on CPU.

The child process of `test_distribution_torch.py`. Run from the repository
root with `KERAS_BACKEND=torch python -m integration.dist_torch OUT.json`.
For each scenario (a policy, or rules) it trains the same model from the same
weights twice with a hand-written loop and Keras's SGD: on one process with
the full batch, and in DDP over `WORLD_SIZE` gloo ranks, each with its half
of the batch. Rank 0 saves its model with `kpe.save_model`; this process
loads it back with `kpe.load_model`. It writes what it saw (losses, dtypes,
policies, weights, loss scales) to OUT.json: the tests judge it.

Torch is imported inside the functions: pytest imports this module for its
doctests under every backend, and only the torch env has torch.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import keras
import numpy as np
from keras import ops

import keras_policy_ext as kpe
from integration.distributed import BATCH, LEARNING_RATE, STEPS, batch, build, initial_weights
from keras_policy_ext.loss_scale import DynamicLossScale, StaticLossScale, all_finite

WORLD_SIZE = 2  # BATCH splits in equal halves: the mean of the ranks' losses is the full-batch loss
RULES = kpe.Rules(
    [
        kpe.Rule("float32", layer=keras.layers.LayerNormalization, reason="float32 statistics"),
        kpe.Rule("float32", name="head", reason="float32 outputs for the loss"),
    ],
    default="mixed_bfloat16",
)
# name: (policy, rules, initial loss scale for float16 compute)
TORCH_SCENARIOS: dict[str, tuple[str, kpe.Rules | None, float]] = {
    "float32": ("float32", None, 2.0**15),
    "mixed_bfloat16": ("mixed_bfloat16", None, 2.0**15),
    "mixed_float16": ("mixed_float16", None, 2.0**15),
    "rules": ("mixed_bfloat16", RULES, 2.0**15),
    # The first float16 gradients overflow: every run must skip the same steps.
    "loss_scale_overflow": ("mixed_float16", None, 2.0**20),
}


def built(scenario: str, weights: list[np.ndarray]) -> keras.Model:
    """`distributed.build()` under the scenario's policy, from `weights`."""
    policy, rules, _ = TORCH_SCENARIOS[scenario]
    with kpe.config.policy_scope(policy, rules=rules):
        model = build()
    model.set_weights(weights)
    return model


def loss_scale(scenario: str, model: keras.Model) -> DynamicLossScale | StaticLossScale:
    """A `DynamicLossScale` (growing every 2 finite steps) for float16 compute, else 1."""
    if kpe.needs_loss_scaling(model):
        return DynamicLossScale(initial=TORCH_SCENARIOS[scenario][2], period=2)
    return StaticLossScale(1.0)


def mse(pred: Any, y: Any) -> Any:
    return ops.mean(ops.square(ops.subtract(ops.cast(pred, "float32"), y)))


def dtype(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def train_loop(
    scenario: str, model: keras.Model, forward: Any, x: np.ndarray, y: np.ndarray
) -> dict:
    """`STEPS` SGD steps on `(x, y)` through `forward` (the model, or its DDP wrapper).

    `backward()` fills each variable's `.grad`, averaged over the ranks under
    DDP; the loss scale multiplies the loss and divides the gradients, and a
    step whose gradients are not all finite is skipped (under DDP every rank
    has the same averaged gradients, so every rank makes the same choice).
    Reports the loss and the scale after each step, and the model.
    """
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    variables = model.trainable_variables
    scale = loss_scale(scenario, model)
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    losses, scales = [], []
    for _ in range(STEPS):
        pred = forward(x)
        loss = mse(pred, y)
        scale.scale(loss).backward()
        grads = scale.unscale([v.value.grad for v in variables])
        finite = all_finite(grads)
        if bool(finite):
            optimizer.apply(grads, variables)
        scale = scale.adjust(finite)
        for v in variables:
            v.value.grad = None
        losses.append(float(ops.convert_to_numpy(loss)))
        scales.append(float(ops.convert_to_numpy(scale.loss_scale)))
    return {
        "losses": losses,
        "loss_scales": scales,
        "loss_scale": scale.get_config(),
        "output_dtype": dtype(pred),
        **describe(model),
    }


def describe(model: keras.Model) -> dict:
    """Each layer's policy and variable dtypes, and the weights (as lists)."""
    layers = {
        layer.name: {
            "policy": layer.dtype_policy.name,
            "kpe": isinstance(layer.dtype_policy, kpe.DTypePolicy),
            "variables": {v.name: dtype(v.value) for v in layer.weights},
        }
        for layer in model.layers
    }
    return {"layers": layers, "weights": [w.tolist() for w in model.get_weights()]}


def shard(rank: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = batch()
    part = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
    return x[part], y[part]


def run_rank(rank: int, weights: list[np.ndarray], workdir: str) -> None:
    """One DDP rank: every scenario in turn; writes `rank<N>.json`, rank 0 the models."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # as the single run: the same kernels, and 1 core per rank
    kpe.install()
    dist.init_process_group(
        "gloo",
        init_method=f"file://{workdir}/rendezvous",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),  # a lost rank fails the others, not hangs them
    )
    try:
        x, y = shard(rank)
        results = {}
        for scenario in TORCH_SCENARIOS:
            model = built(scenario, weights)
            results[scenario] = train_loop(scenario, model, DistributedDataParallel(model), x, y)
            if rank == 0:
                kpe.save_model(model, f"{workdir}/{scenario}.keras")
        pathlib.Path(workdir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def main(out: str) -> None:
    import torch
    import torch.multiprocessing

    start = time.perf_counter()
    torch.set_num_threads(1)
    kpe.install()
    weights = initial_weights()
    x, y = batch()
    scenarios = {}
    for scenario in TORCH_SCENARIOS:
        model = built(scenario, weights)
        scenarios[scenario] = {"single": train_loop(scenario, model, model, x, y)}
    with tempfile.TemporaryDirectory() as workdir:
        torch.multiprocessing.spawn(run_rank, args=(weights, workdir), nprocs=WORLD_SIZE)
        ranks = [
            json.loads(pathlib.Path(workdir, f"rank{rank}.json").read_text())
            for rank in range(WORLD_SIZE)
        ]
        for scenario, found in scenarios.items():
            found["ranks"] = [results[scenario] for results in ranks]
            found["loaded"] = describe(kpe.load_model(f"{workdir}/{scenario}.keras"))
    report = {
        "keras": keras.__version__,
        "torch": torch.__version__,
        "world_size": WORLD_SIZE,
        "steps": STEPS,
        "seconds": time.perf_counter() - start,
        "scenarios": scenarios,
    }
    pathlib.Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
