"""Child: every scenario on 1 device and under `tf.distribute.MirroredStrategy`.

Run as `python -m integration.dist_tensorflow OUT.json` with
`KERAS_BACKEND=tensorflow`. `main` splits the CPU into 2 logical devices
first, before TensorFlow initializes it. TensorFlow is imported in the
functions: pytest imports this module (for doctests) in every backend's env.
"""

import contextlib

import keras

from integration.distributed import SCENARIOS, initial_weights, train, write

DEVICES = 2


def layout(variable: keras.Variable) -> dict:
    """Where a variable's value lives: one full copy per replica (mirrored)."""
    replicas = getattr(variable.value, "values", (variable.value,))
    return {
        "devices": len({r.device for r in replicas}),
        "mesh": None,
        "spec": [None] * len(variable.shape),
        "shard_shape": list(replicas[0].shape),
        "dtypes": sorted({r.dtype.name for r in replicas}),
    }


def main() -> None:
    import tensorflow as tf

    logical = [tf.config.LogicalDeviceConfiguration()] * DEVICES
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], logical)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == DEVICES, devices
    weights = initial_weights()
    facts = {}
    for scenario in SCENARIOS:
        strategy = tf.distribute.MirroredStrategy(devices)
        facts[scenario] = {
            "single": train(scenario, weights, contextlib.nullcontext, layout),
            "mirrored": train(scenario, weights, strategy.scope, layout),
        }
    write({"devices": DEVICES, "layouts": {}, "scenarios": facts})


if __name__ == "__main__":
    main()
