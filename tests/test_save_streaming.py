"""`kpe.save_model` adds its entries to the `.keras` archive without reading it whole.

The archive Keras writes holds the weights (here a 200 MB file); kpe then
rewrites it (a note in config.json for a policy Keras cannot name). The
rewrite streams each entry: what Python allocates after Keras's own
`model.save` returns stays far below the weights' size. Figures (peak
memory before and after) live in benchmarks/save_memory.py.
"""

import os
import tracemalloc
import zipfile

import keras

import keras_policy_ext as kpe

WEIGHTS_BYTES = 200 * 2**20


class PeakFromKpe(keras.Sequential):
    """A Sequential model whose `save` starts tracemalloc's peak over once Keras is done.

    So the peak read after `kpe.save_model`, less what was allocated when
    Keras returned (`baseline`), is what kpe's own work on the archive
    allocated, not what Keras's `model.save` did before it.
    """

    baseline = None

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        tracemalloc.reset_peak()
        self.baseline = tracemalloc.get_traced_memory()[0]


def test_save_model_rewrites_a_200_mb_archive_without_reading_it_whole(tmp_path):
    policy = "params=bfloat16,compute=float32"  # a role name: save_model adds its note
    with kpe.installed(), kpe.policy_scope(policy):
        model = PeakFromKpe(
            [keras.Input((1,)), keras.layers.Dense(WEIGHTS_BYTES // 2, use_bias=False)]
        )
    path = tmp_path / "big.keras"
    tracemalloc.start()
    try:
        kpe.save_model(model, path)
        peak = tracemalloc.get_traced_memory()[1] - model.baseline
    finally:
        tracemalloc.stop()
    with zipfile.ZipFile(path) as archive:
        weights = archive.getinfo("model.weights.h5").file_size
        assert b"keras_policy_ext" in archive.read("config.json")  # the rewrite happened
    assert weights >= WEIGHTS_BYTES
    assert peak < weights / 10, f"peak {peak / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB"
    assert os.path.getsize(path) >= WEIGHTS_BYTES
