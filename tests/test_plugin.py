import threading

import keras
import numpy as np
import pytest

import keras_policy_ext as kpe
from keras_policy_ext import plugin

PUBLIC = [
    (keras.config, "dtype_policy"),
    (keras.config, "set_dtype_policy"),
    (keras.mixed_precision, "dtype_policy"),
    (keras.mixed_precision, "global_policy"),
    (keras.mixed_precision, "set_dtype_policy"),
    (keras.mixed_precision, "set_global_policy"),
    (keras.dtype_policies, "get"),
]


def snapshot():
    return {(path, a): plugin.PATCHES.current(path, a) for path, a, *_ in plugin.PATCHES.targets}


def test_install_and_uninstall_are_idempotent_and_restore_keras_exactly():
    before = snapshot()
    kpe.install()
    kpe.install()
    assert kpe.is_installed()
    patched = snapshot()
    assert all(patched[k] is not before[k] for k in before)
    kpe.uninstall()
    kpe.uninstall()
    assert not kpe.is_installed()
    assert snapshot() == before


def test_public_keras_names_are_kpe_s_while_installed():
    with kpe.installed():
        assert keras.config.dtype_policy is kpe.config.dtype_policy
        assert keras.config.set_dtype_policy is kpe.config.set_dtype_policy
        assert keras.mixed_precision.set_global_policy is kpe.config.set_dtype_policy
        assert keras.dtype_policies.get is kpe.dtype_policies.get
    for module, attr in PUBLIC:
        assert getattr(module, attr).__module__.startswith("keras.")


def test_seed_example_runs_verbatim_with_kpe_policies():
    kpe.install()
    keras.config.set_dtype_policy("mixed_float16")
    layer1 = keras.layers.Dense(10)
    assert repr(layer1.dtype_policy) == '<DTypePolicy "mixed_float16">'
    layer2 = keras.layers.Dense(10, dtype="float32")
    assert repr(layer2.dtype_policy) == '<DTypePolicy "float32">'
    keras.config.set_dtype_policy("float32")
    assert type(layer1.dtype_policy) is type(layer2.dtype_policy) is kpe.DTypePolicy
    assert kpe.config.dtype_policy().name == "float32"


def test_legacy_names_and_dtype_none():
    kpe.install()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("mixed_bfloat16")
    assert keras.mixed_precision.global_policy() is kpe.config.dtype_policy()
    layer = keras.layers.Dense(2, dtype=None)
    assert layer.dtype_policy is kpe.config.dtype_policy()
    assert keras.DTypePolicy().name == "mixed_bfloat16"


def test_keras_bad_input_still_raises_keras_s_error_and_changes_nothing():
    kpe.install()
    keras.config.set_dtype_policy("mixed_bfloat16")
    for bad in (None, 3, "float33"):
        with pytest.raises(ValueError):
            keras.config.set_dtype_policy(bad)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"


def test_default_reaches_stock_layers_in_every_thread():
    kpe.install()
    keras.config.set_dtype_policy("mixed_bfloat16")
    barrier = threading.Barrier(3)
    seen = []

    def worker():
        barrier.wait()
        layer = keras.layers.Dense(2)
        y = layer(np.ones((1, 3), "float32"))
        seen.append((layer.dtype_policy.name, keras.backend.standardize_dtype(y.dtype)))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [("mixed_bfloat16", "bfloat16")] * 3


def test_without_the_plugin_other_threads_keep_keras_s_default():
    """The gap the plugin closes: Keras's own global is per thread."""
    kpe.config.set_dtype_policy("mixed_bfloat16")
    seen = []
    t = threading.Thread(target=lambda: seen.append(keras.layers.Dense(2).dtype_policy.name))
    t.start()
    t.join()
    assert seen == ["float32"]


def test_scopes_reach_stock_layers_per_thread():
    kpe.install()
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name):
        with kpe.config.policy_scope(name):
            barrier.wait()
            seen[name] = keras.layers.Dense(2).dtype_policy.name

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("float16", "mixed_float16")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"float16": "float16", "mixed_float16": "mixed_float16"}


def test_quantized_policies_stay_keras_s_under_the_plugin():
    kpe.install()
    policy = keras.dtype_policies.get("int8_from_float32")
    assert isinstance(policy, keras.dtype_policies.QuantizedDTypePolicy)


def test_installed_context_leaves_a_prior_install_alone():
    kpe.install()
    with kpe.installed():
        pass
    assert kpe.is_installed()


def test_missing_keras_internal_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(
        plugin.PATCHES,
        "targets",
        plugin.PATCHES.targets + (("keras.config", "no_such_name", print),),
    )
    with pytest.raises(RuntimeError, match=r"keras\.config\.no_such_name") as info:
        kpe.install()
    assert keras.__version__ in str(info.value)
    assert not kpe.is_installed()
    assert keras.config.dtype_policy.__module__.startswith("keras.")


def keras_global():
    """Keras's own per-thread global policy, as stored (`None`: never set)."""
    return kpe.internals.keras_global_policy()


def test_installed_blocks_are_counted_across_threads():
    """A enters, B enters, A exits: B's block keeps the plugin until it exits."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with kpe.installed():
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with kpe.installed():
            b_in.set()
            a_out.wait()
            seen["installed"] = kpe.is_installed()
            seen["policy"] = type(keras.layers.Dense(2).dtype_policy)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"installed": True, "policy": kpe.DTypePolicy}
    assert not kpe.is_installed()
    assert keras.config.dtype_policy.__module__.startswith("keras.")


def test_an_explicit_install_survives_installed_blocks():
    with kpe.installed():
        kpe.install()
    assert kpe.is_installed()
    kpe.uninstall()
    kpe.install()
    with kpe.installed():
        with kpe.installed():
            pass
    assert kpe.is_installed()


def test_uninstall_inside_a_block_takes_effect_when_the_block_exits():
    kpe.install()
    with kpe.installed():
        kpe.uninstall()
        assert kpe.is_installed()
        assert type(keras.layers.Dense(2).dtype_policy) is kpe.DTypePolicy
    assert not kpe.is_installed()
    assert snapshot()[("keras.config", "dtype_policy")].__module__.startswith("keras.")


@keras.saving.register_keras_serializable(package="kpe_test_plugin")
class Handshake(keras.layers.Layer):
    """An identity layer that runs `Handshake.hook` (once) when it is built."""

    hook = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        hook, Handshake.hook = Handshake.hook, None
        if hook is not None:
            hook()

    def call(self, x):
        return x


def test_retarget_to_rules_leaves_another_thread_s_block_installed():
    """retarget's own installed() block exits while another thread's is open."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), Handshake()])
    rules = kpe.Rules([kpe.Rule("float32", layer=keras.layers.Softmax)], default="bfloat16")
    inside, entered, done = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def other():
        inside.wait()  # retarget is rebuilding the model, plugin installed
        with kpe.installed():
            entered.set()
            done.wait()  # retarget has returned
            seen.append((kpe.is_installed(), type(keras.layers.Dense(2).dtype_policy)))

    def hook():
        inside.set()
        entered.wait()

    Handshake.hook = hook
    thread = threading.Thread(target=other)
    thread.start()
    try:
        new = kpe.retarget(model, rules)
    finally:
        inside.set()
        done.set()
        thread.join()
    assert new.layers[0].dtype_policy.name == "bfloat16"
    assert seen == [(True, kpe.DTypePolicy)]
    assert not kpe.is_installed()


def test_uninstall_leaves_a_later_patch_in_place():
    keras_getter = keras.config.dtype_policy
    before = snapshot()

    def theirs():
        return keras.DTypePolicy("float16")

    kpe.install()
    keras.config.dtype_policy = theirs  # another library patches after kpe
    try:
        kpe.uninstall()
        assert keras.config.dtype_policy is theirs
        after = snapshot()
        for key in before:
            if key != ("keras.config", "dtype_policy"):
                assert after[key] is before[key], key
    finally:
        keras.config.dtype_policy = keras_getter


def test_compile_resolved_before_uninstall_still_compiles():
    """The race: `model.compile` looked up while installed, run after `uninstall()`."""
    kpe.install()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="mixed_float16")])
    compile_ = model.compile
    kpe.uninstall()
    compile_(optimizer="sgd", loss="mse")  # KeyError before the fix
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("with_plugin", [True, False])
def test_clear_session_resets_the_global_policy_as_stock_keras_does(with_plugin):
    stock = []
    keras.config.set_dtype_policy("mixed_float16")  # Keras's own, plugin not installed
    keras.utils.clear_session()
    stock.append(keras.config.dtype_policy().name)
    if with_plugin:
        kpe.install()
    keras.config.set_floatx("float16")  # not float64: JAX without x64 refuses it (plugin)
    kpe.config.set_dtype_policy("mixed_float16")
    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.clear_session()
    assert kpe.config.dtype_policy().name == "float16"
    assert keras.config.dtype_policy().name == "float16"
    assert keras.layers.Dense(2).dtype_policy.name == "float16"
    assert stock == ["float32"]  # stock Keras: the policy of floatx


def test_uninstall_leaves_keras_s_global_as_before_install():
    keras.config.set_dtype_policy("mixed_bfloat16")  # stock Keras, this thread
    theirs = keras_global()
    kpe.install()
    keras.config.set_dtype_policy("float16")
    with kpe.config.policy_scope("mixed_float16"):
        keras.layers.Dense(2)
    kpe.config.set_dtype_policy("bfloat16")
    kpe.uninstall()
    assert keras_global() is theirs
    assert keras.layers.Dense(2).dtype_policy is theirs


def test_uninstall_with_keras_s_global_never_set_leaves_it_unset():
    keras.utils.clear_session(free_memory=False)  # as in a fresh process
    assert keras_global() is None
    kpe.install()
    keras.config.set_dtype_policy("float16")
    with kpe.config.policy_scope("mixed_float16"):
        pass
    kpe.uninstall()
    assert keras_global() is None
    keras.config.set_floatx("float64")
    assert keras.layers.Dense(2).dtype_policy.name == "float64"
    assert type(keras.layers.Dense(2).dtype_policy) is keras.DTypePolicy


def test_asyncio_tasks_build_stock_layers_under_their_own_scopes():
    import asyncio

    kpe.install()

    async def task(name, entered, release):
        with kpe.config.policy_scope(name):
            entered.set()
            await release.wait()  # the other task's scope is open too
            return keras.layers.Dense(2).dtype_policy.name

    async def main():
        release = asyncio.Event()
        entered = [asyncio.Event(), asyncio.Event()]
        tasks = [
            asyncio.create_task(task(n, e, release))
            for n, e in zip(["float16", "mixed_bfloat16"], entered)
        ]
        for e in entered:
            await e.wait()
        outside = keras.layers.Dense(2).dtype_policy.name
        release.set()
        return outside, await asyncio.gather(*tasks)

    outside, names = asyncio.run(main())
    assert outside == "float32"
    assert names == ["float16", "mixed_bfloat16"]
