"""Regenerates `data/<backend>.keras` and `data/<backend>.npz` for one backend.

Run once per backend from the repository root
(`KERAS_BACKEND=jax python -m integration.make_saved_models`);
`test_saving.py` loads every other backend's file on its own backend.
"""

import pathlib

import keras
import numpy as np

import keras_policy_ext as kpe
from integration.builders import BUILDERS, data

DATA = pathlib.Path(__file__).parent / "data"
MODEL, POLICY = "functional_conv", "mixed_bfloat16"


def main():
    keras.utils.set_random_seed(0)
    with kpe.config.policy_scope(POLICY):
        model = BUILDERS[MODEL]()
    x, _ = data(MODEL, n=4)
    y = keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32"))
    backend = keras.backend.backend()
    model.save(DATA / f"{backend}.keras")
    np.savez(DATA / f"{backend}.npz", x=x, y=y)


if __name__ == "__main__":
    main()
