"""Child: every scenario on 1 device, under `DataParallel` and under `ModelParallel`.

Run as `python -m integration.dist_jax OUT.json` with `KERAS_BACKEND=jax`
and `XLA_FLAGS=--xla_force_host_platform_device_count=8` (`XLA_FLAGS`
below): JAX reads it when it starts, so it must be in the environment of a
fresh process.
"""

import contextlib

import keras

from integration.distributed import SCENARIOS, initial_weights, train, write

DEVICES = 8
XLA_FLAGS = f"--xla_force_host_platform_device_count={DEVICES}"
# Where the LayoutMap puts each variable (regex full matches on the path).
LAYOUTS = {
    ".*hidden/kernel": (None, "model"),
    ".*hidden/bias": ("model",),
    ".*head/kernel": ("model", None),
}


def model_parallel() -> keras.distribution.ModelParallel:
    devices = keras.distribution.list_devices("cpu")
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    for pattern, axes in LAYOUTS.items():
        layout_map[pattern] = axes
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def layout(variable: keras.Variable) -> dict:
    """Where a variable's value lives: devices, mesh, partition spec, shard shape, dtypes."""
    sharding = variable.value.sharding
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    return {
        "devices": len(sharding.device_set),
        "mesh": dict(mesh.shape) if mesh is not None else None,
        "spec": None if spec is None else [*spec] + [None] * (len(variable.shape) - len(spec)),
        "shard_shape": list(variable.value.addressable_shards[0].data.shape),
        "dtypes": sorted({str(s.data.dtype) for s in variable.value.addressable_shards}),
    }


def main() -> None:
    assert len(keras.distribution.list_devices("cpu")) == DEVICES
    engines = {
        "single": None,
        "data_parallel": lambda: keras.distribution.DataParallel(
            devices=keras.distribution.list_devices("cpu")
        ),
        "model_parallel": model_parallel,
    }
    weights = initial_weights()
    facts = {}
    for scenario in SCENARIOS:
        facts[scenario] = {}
        for engine, make in engines.items():
            scope = make().scope if make else contextlib.nullcontext
            facts[scenario][engine] = train(scenario, weights, scope, layout)
    write({"devices": DEVICES, "layouts": LAYOUTS, "scenarios": facts})


if __name__ == "__main__":
    main()
