import asyncio
import threading

import keras
import pytest

import keras_policy_ext as kpe


def in_thread(fn):
    """Runs `fn` in a fresh thread and returns its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_default_is_the_floatx_policy():
    kpe.config.restore(kpe.config.Snapshot(None, keras_global()))  # never set, as when fresh
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float32")
    keras.config.set_floatx("float64")
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float64")
    assert type(kpe.config.dtype_policy()) is kpe.DTypePolicy


@pytest.mark.parametrize("policy", ["mixed_float16", kpe.DTypePolicy("mixed_float16")])
def test_set_dtype_policy_accepts_names_and_policies(policy):
    kpe.config.set_dtype_policy(policy)
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("mixed_float16")
    assert type(kpe.config.dtype_policy()) is kpe.DTypePolicy


def test_keras_policy_instances_are_used_as_given():
    theirs = keras.DTypePolicy("mixed_bfloat16")
    kpe.config.set_dtype_policy(theirs)
    assert kpe.config.dtype_policy() is theirs


def test_quantized_names_build_keras_quantized_policies():
    kpe.config.set_dtype_policy("int8_from_mixed_bfloat16")
    policy = kpe.config.dtype_policy()
    assert isinstance(policy, keras.dtype_policies.QuantizedDTypePolicy)
    assert policy.quantization_mode == "int8"


def test_default_is_process_wide():
    kpe.config.set_dtype_policy("mixed_bfloat16")
    assert in_thread(kpe.config.dtype_policy) == kpe.DTypePolicy("mixed_bfloat16")
    in_thread(lambda: kpe.config.set_dtype_policy("float16"))
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("float16")


def test_stock_layers_in_the_calling_thread_follow_without_the_plugin():
    assert not kpe.is_installed()
    kpe.config.set_dtype_policy("mixed_float16")
    assert keras.layers.Dense(2).dtype_policy == kpe.DTypePolicy("mixed_float16")
    assert keras.config.dtype_policy() == kpe.DTypePolicy("mixed_float16")
    with kpe.config.policy_scope("bfloat16"):
        assert keras.layers.Dense(2).dtype_policy == kpe.DTypePolicy("bfloat16")
    assert keras.layers.Dense(2).dtype_policy == kpe.DTypePolicy("mixed_float16")


@pytest.mark.parametrize(
    "bad, error",
    [
        (None, ValueError),
        (3, ValueError),
        (object(), ValueError),
        ("float33", ValueError),
        ("mixed_float32", ValueError),
    ],
)
def test_bad_input_raises_and_changes_nothing(bad, error):
    kpe.config.set_dtype_policy("mixed_bfloat16")
    with pytest.raises(error) as info:
        kpe.config.set_dtype_policy(bad)
    assert repr(bad) in str(info.value)
    for policy in (
        kpe.config.dtype_policy(),
        keras.config.dtype_policy(),
        in_thread(kpe.config.dtype_policy),
    ):
        assert policy == kpe.DTypePolicy("mixed_bfloat16")
    with pytest.raises(error):
        with kpe.config.policy_scope(bad):
            pass  # pragma: no cover
    assert kpe.config.dtype_policy() == kpe.DTypePolicy("mixed_bfloat16")


def test_scopes_nest_and_restore():
    kpe.config.set_dtype_policy("float32")
    with kpe.config.policy_scope("mixed_float16") as outer:
        assert outer == kpe.config.dtype_policy() == kpe.DTypePolicy("mixed_float16")
        with kpe.config.policy_scope("mixed_bfloat16"):
            assert kpe.config.dtype_policy().name == "mixed_bfloat16"
        assert kpe.config.dtype_policy().name == "mixed_float16"
    assert kpe.config.dtype_policy().name == "float32"


def test_scope_restores_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with kpe.config.policy_scope("mixed_float16"):
            with kpe.config.policy_scope("bfloat16"):
                raise RuntimeError("boom")
    assert kpe.config.dtype_policy().name == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_set_inside_a_scope_changes_the_default_not_the_scope():
    with kpe.config.policy_scope("float16"):
        kpe.config.set_dtype_policy("mixed_bfloat16")
        assert kpe.config.dtype_policy().name == "float16"
        assert in_thread(kpe.config.dtype_policy).name == "mixed_bfloat16"
    assert kpe.config.dtype_policy().name == "mixed_bfloat16"


def test_scopes_are_invisible_to_other_threads():
    kpe.config.set_dtype_policy("float32")
    with kpe.config.policy_scope("mixed_float16"):
        assert in_thread(kpe.config.dtype_policy).name == "float32"


def test_threads_scopes_do_not_leak_into_each_other():
    barrier = threading.Barrier(4)
    seen = {}

    def worker(name):
        with kpe.config.policy_scope(name):
            barrier.wait()  # every thread is inside its scope now
            seen[name] = kpe.config.dtype_policy().name
            barrier.wait()

    names = ["float16", "bfloat16", "mixed_float16", "mixed_bfloat16"]
    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {n: n for n in names}


def test_asyncio_tasks_keep_their_own_scopes():
    async def task(name, entered, release):
        with kpe.config.policy_scope(name):
            entered.set()
            await release.wait()
            return kpe.config.dtype_policy().name

    async def main():
        release = asyncio.Event()
        entered = [asyncio.Event(), asyncio.Event()]
        tasks = [
            asyncio.create_task(task(n, e, release))
            for n, e in zip(["float16", "mixed_bfloat16"], entered)
        ]
        for e in entered:
            await e.wait()  # both scopes are open at once
        outside = kpe.config.dtype_policy().name
        release.set()
        return outside, await asyncio.gather(*tasks)

    outside, names = asyncio.run(main())
    assert outside == "float32"
    assert names == ["float16", "mixed_bfloat16"]


def test_mixed_precision_aliases():
    mp = kpe.mixed_precision
    assert mp.Policy is mp.DTypePolicy is kpe.DTypePolicy
    mp.set_global_policy("mixed_float16")
    assert mp.global_policy() == mp.dtype_policy() == kpe.DTypePolicy("mixed_float16")
    mp.set_dtype_policy("float32")
    assert kpe.config.dtype_policy().name == "float32"


def keras_global():
    """Keras's own per-thread global policy, as stored (`None`: never set)."""
    return kpe.internals.keras_global_policy()


def test_a_scope_restores_keras_s_global_object_exactly():
    assert not kpe.is_installed()
    keras.config.set_dtype_policy("mixed_bfloat16")  # stock Keras's setter
    theirs = keras_global()
    with kpe.config.policy_scope("float16"):
        assert keras.layers.Dense(2).dtype_policy.name == "float16"
        with kpe.config.policy_scope("mixed_float16"):
            assert keras.layers.Dense(2).dtype_policy.name == "mixed_float16"
        assert keras.layers.Dense(2).dtype_policy.name == "float16"
    assert keras_global() is theirs
    with pytest.raises(RuntimeError):
        with kpe.config.policy_scope("float16"):
            raise RuntimeError("boom")
    assert keras_global() is theirs
    assert keras.layers.Dense(2).dtype_policy is theirs


def test_a_scope_leaves_an_unset_keras_global_unset():
    keras.utils.clear_session(free_memory=False)  # as in a fresh process
    assert keras_global() is None
    with kpe.config.policy_scope("mixed_float16"):
        pass
    assert keras_global() is None
    keras.config.set_floatx("float64")  # stock Keras follows floatx while unset
    assert keras.layers.Dense(2).dtype_policy.name == "float64"


def test_retarget_keeps_a_policy_set_through_keras():
    keras.config.set_dtype_policy("mixed_bfloat16")
    theirs = keras_global()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    new = kpe.retarget(model, "float16")
    assert new.layers[0].dtype_policy.name == "float16"
    assert keras_global() is theirs


def test_set_inside_a_scope_reaches_stock_layers_after_the_scope():
    assert not kpe.is_installed()
    with kpe.config.policy_scope("float16"):
        kpe.config.set_dtype_policy("mixed_bfloat16")
        assert keras.layers.Dense(2).dtype_policy.name == "float16"  # the scope wins
    assert keras.layers.Dense(2).dtype_policy.name == "mixed_bfloat16"
    assert keras_global() is kpe.config.dtype_policy()


def test_a_keras_setting_made_inside_a_scope_outlives_the_scope():
    assert not kpe.is_installed()
    with kpe.config.policy_scope("float16"):
        with kpe.config.policy_scope("bfloat16"):
            keras.config.set_dtype_policy("mixed_float16")  # stock Keras's setter
            theirs = keras_global()
        assert keras_global() is theirs
    assert keras_global() is theirs
    assert keras.layers.Dense(2).dtype_policy is theirs


@pytest.mark.parametrize("first_out", [0, 1])
def test_without_the_plugin_stock_layers_see_the_thread_s_latest_scope(first_out):
    """Keras's global is per thread: asyncio tasks share it (kpe's own getter does not)."""
    assert not kpe.is_installed()
    keras.config.set_dtype_policy("mixed_bfloat16")
    theirs = keras_global()
    names = ["float16", "mixed_float16"]

    async def task(i, entered, release, exits):
        with kpe.config.policy_scope(names[i]):
            entered[i].set()
            await release.wait()
            seen = (kpe.config.dtype_policy().name, keras.layers.Dense(2).dtype_policy.name)
            if i != first_out:
                await exits.wait()  # the other task's scope has closed
                seen += (keras.layers.Dense(2).dtype_policy.name,)
        exits.set()
        return seen

    async def main():
        release, exits = asyncio.Event(), asyncio.Event()
        entered = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(task(i, entered, release, exits)) for i in range(2)]
        for e in entered:
            await e.wait()
        release.set()
        return await asyncio.gather(*tasks)

    seen = asyncio.run(main())
    # kpe's getter: per task; stock layers: the latest scope opened in the thread,
    # then the still-open one once the other closes.
    assert seen[first_out] == (names[first_out], names[1])
    assert seen[1 - first_out] == (names[1 - first_out], names[1], names[1 - first_out])
    assert keras_global() is theirs


@pytest.mark.parametrize("installed", [False, True])
@pytest.mark.parametrize("bad", [5, "float32", kpe.DTypePolicy("float32"), [1]])
def test_policy_scope_rejects_rules_that_are_not_rules(bad, installed):
    if installed:
        kpe.install()
    keras.config.set_dtype_policy("mixed_bfloat16")
    before = (kpe.config.dtype_policy(), keras_global())
    with pytest.raises(TypeError, match=r"rules=.*Rules") as info:
        with kpe.config.policy_scope("float16", rules=bad):
            pass  # pragma: no cover
    assert repr(bad) in str(info.value)
    assert (kpe.config.dtype_policy(), keras_global()) == before
    assert kpe.config.dtype_policy() is before[0] and keras_global() is before[1]
    assert kpe.config.scoped_rules() is None


def test_clear_session_resets_the_default_also_without_the_plugin():
    kpe.config.set_dtype_policy("mixed_float16")
    keras.utils.clear_session(free_memory=False)
    assert kpe.config.dtype_policy().name == "float32"
    assert in_thread(kpe.config.dtype_policy).name == "float32"
    assert keras.layers.Dense(2).dtype_policy.name == "float32"


@pytest.mark.parametrize("bad", [3, "float33"])
def test_policy_scope_with_rules_rejects_a_bad_policy(bad):
    kpe.install()
    rules = kpe.Rules([kpe.Rule("float32", layer=keras.layers.Softmax)], default="float16")
    with pytest.raises(ValueError, match=repr(bad)):
        with kpe.config.policy_scope(bad, rules=rules):
            pass  # pragma: no cover
    assert kpe.config.dtype_policy().name == "float32"
    assert kpe.config.scoped_rules() is None
