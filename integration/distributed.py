"""Training under a distribution engine against a single device: the shared half.

A backend's distribution test runs its engine in a child process (JAX needs
`XLA_FLAGS` and TensorFlow its logical devices before they start), which
trains every scenario of `SCENARIOS` once on one device and once per engine
from the same initial weights and data, and writes the facts that the test
then judges as JSON. `integration/dist_jax.py` and
`integration/dist_tensorflow.py` are the children; this module holds the
model, the scenarios, the training and the facts they share, and
`run_child` for the tests. `integration/dist_torch.py` (torch has no engine
under `fit`: a DDP custom loop) shares the model, the data and `run_child`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

import keras_policy_ext as kpe
from integration.builders import as_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32  # one full batch per step; divides across 8 devices, and 2 x 4
STEPS = 6
LEARNING_RATE = 0.1
HEAD_FLOAT32 = kpe.Rule("float32", name="head", reason="the loss sees float32 outputs")

# name -> (policy, rules, initial loss scale or None for the default)
SCENARIOS: dict[str, tuple[str, kpe.Rules | None, float | None]] = {
    "mixed_bfloat16": ("mixed_bfloat16", None, None),
    "mixed_float16": ("mixed_float16", None, None),
    "rules": (
        "mixed_float16",
        kpe.Rules([*kpe.rules.FLOAT32_NUMERICS.rules, HEAD_FLOAT32]),
        None,
    ),
    # Starts so high that the first float16 gradients overflow: the dynamic
    # scale must skip the same steps, and halve alike, on every device.
    "loss_scale_overflow": ("mixed_float16", None, 2.0**20),
}


def build() -> keras.Model:
    """The model every engine trains: named layers, so layouts can address them."""
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(8, name="head"),
        ],
        name="mlp",
    )


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(BATCH, 8)).astype("float32"),
        rng.normal(size=(BATCH, 8)).astype("float32"),
    )


def initial_weights() -> list[np.ndarray]:
    keras.utils.set_random_seed(0)
    return build().get_weights()


def train(
    scenario: str,
    weights: list[np.ndarray],
    scope: Callable[[], Any] = contextlib.nullcontext,
    layout: Callable[[keras.Variable], Any] = lambda v: None,
) -> dict:
    """Builds, trains and reloads `scenario`'s model within `scope()`; its facts.

    The saved model is also loaded outside `scope()`, on one device.
    `layout(variable)` is the engine's description of where a variable lives
    (JSON-able); it is recorded right after the model is built, so it shows
    how variables were *created*.
    """
    policy, rules, initial_scale = SCENARIOS[scenario]
    x, y = batch()
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "model.keras")
    with tmp, kpe.installed():
        with scope():
            with kpe.config.policy_scope(policy, rules=rules):
                model = build()
            created = variables(model, layout)
            model.set_weights(weights)
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
            if initial_scale is not None:
                optimizer = kpe.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
            model.compile(optimizer=optimizer, loss="mse")  # the plugin's compile scales by dtype
            scales: list[float | None] = []  # after each step (one batch an epoch)
            record = keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: scales.append(scale_of(model.optimizer))
            )
            history = model.fit(
                x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0, callbacks=[record]
            )
            y_pred = model(x)
            output = as_numpy(y_pred)
            kpe.save_model(model, path)
            loaded = kpe.load_model(path)
            facts = {
                "policies": policies(model),
                "variables": created,
                "output_dtype": keras.backend.standardize_dtype(y_pred.dtype),
                "losses": [float(v) for v in history.history["loss"]],
                "optimizer": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
                "scales": scales,
                "reloaded": {
                    "policies": policies(loaded),
                    "variables": variables(loaded, layout),
                    "weights_equal": all(
                        np.array_equal(a, b)
                        for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True)
                    ),
                    "outputs_equal": bool(np.array_equal(as_numpy(loaded(x)), output)),
                },
            }
        # The file trained under the engine serves on one device, too.
        served = kpe.load_model(path)
        facts["served"] = {
            "policies": policies(served),
            "outputs_close": bool(np.allclose(as_numpy(served(x)), output, rtol=1e-2, atol=1e-2)),
        }
    return facts


def policies(model: keras.Model) -> dict[str, str]:
    """Each layer's policy name, `"<name> (not kpe)"` for a policy that is not kpe's."""
    return {
        layer.name: layer.dtype_policy.name
        + ("" if isinstance(layer.dtype_policy, kpe.DTypePolicy) else " (not kpe)")
        for layer in model.layers
    }


def variables(model: keras.Model, layout: Callable[[keras.Variable], Any]) -> list[dict]:
    """Each variable's path, declared and held dtype, and `layout`."""
    return [
        {
            "path": v.path,
            "layer": v.path.split("/")[-2],
            "shape": list(v.shape),
            "dtype": v.dtype,
            "held": keras.backend.standardize_dtype(v.value.dtype),
            "layout": layout(v),
        }
        for v in model.weights
    ]


def scale_of(optimizer: keras.optimizers.Optimizer) -> float | None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
    return None


def write(facts: dict) -> None:
    """The child's last step: `facts` as JSON into the file named by `argv[1]`."""
    with open(sys.argv[1], "w") as f:
        json.dump(facts, f, indent=1)


def run_child(module: str, out: str, timeout: int = 600, **env: str) -> dict:
    """Runs `python -m module out` with this process's backend and `env`; its facts."""
    path = os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    env["KERAS_BACKEND"] = keras.backend.backend()
    result = subprocess.run(
        [sys.executable, "-m", module, out],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    with open(out) as f:
        return json.load(f)
