"""Real models built and run concurrently: the default is process-wide, scopes are not."""

import threading
from contextlib import nullcontext

import keras
import pytest

import keras_policy_ext as kpe
from integration.builders import BUILDERS, all_layers, data

THREAD_POLICIES = ["float32", "mixed_float16", "mixed_bfloat16", "bfloat16"]


def run_threads(target, args_list):
    errors = []

    def guarded(*args):
        try:
            target(*args)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=a) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def build_and_run(name):
    model = BUILDERS[name]()
    x, _ = data(name, n=2)
    return model, keras.backend.standardize_dtype(model(x).dtype)


@pytest.mark.parametrize("name", ["sequential_mlp", "functional_conv"])
def test_each_thread_builds_under_its_own_scope(name):
    kpe.install()
    keras.config.set_dtype_policy("mixed_float16")
    barrier = threading.Barrier(len(THREAD_POLICIES) + 1)
    results = {}

    def worker(policy):
        scope = kpe.config.policy_scope(policy) if policy else nullcontext()
        with scope:
            barrier.wait()  # every scope is open at once
            results[policy or "default"] = build_and_run(name)
            barrier.wait()

    run_threads(worker, [(p,) for p in THREAD_POLICIES] + [(None,)])
    expected = {p: kpe.DTypePolicy(p) for p in THREAD_POLICIES}
    expected["default"] = kpe.DTypePolicy("mixed_float16")
    for key, policy in expected.items():
        model, out_dtype = results[key]
        assert out_dtype == policy.compute_dtype, key
        for layer in all_layers(model):
            if not isinstance(layer, keras.layers.InputLayer):
                assert layer.dtype_policy == policy, (key, layer.path)
    assert keras.config.dtype_policy() == kpe.DTypePolicy("mixed_float16")


def test_default_set_in_a_worker_reaches_the_main_thread_and_others():
    kpe.install()
    run_threads(lambda: keras.config.set_dtype_policy("mixed_bfloat16"), [()])
    seen = []
    run_threads(lambda: seen.append(build_and_run("sequential_mlp")[1]), [()] * 3)
    assert seen == ["bfloat16"] * 3
    assert build_and_run("sequential_mlp")[1] == "bfloat16"


def test_installed_blocks_in_many_threads_keep_the_plugin_until_the_last_exits():
    """Threads enter `installed()` one after another and leave in the same order."""
    n = len(THREAD_POLICIES)
    entered = [threading.Event() for _ in range(n)]
    left = [threading.Event() for _ in range(n)]
    results = {}

    def worker(i, policy):
        if i:
            entered[i - 1].wait()
        with kpe.installed():
            entered[i].set()
            if i:
                left[i - 1].wait()  # every earlier block has exited
            with kpe.config.policy_scope(policy):
                model, out_dtype = build_and_run("sequential_mlp")
            results[policy] = (kpe.is_installed(), out_dtype, model)
        left[i].set()

    run_threads(worker, list(enumerate(THREAD_POLICIES)))
    for policy in THREAD_POLICIES:
        installed, out_dtype, model = results[policy]
        assert installed, policy
        assert out_dtype == kpe.DTypePolicy(policy).compute_dtype, policy
        for layer in all_layers(model):
            if not isinstance(layer, keras.layers.InputLayer):
                assert type(layer.dtype_policy) is kpe.DTypePolicy, (policy, layer.path)
    assert not kpe.is_installed()


def test_compile_while_another_thread_installs_and_uninstalls():
    rounds = 30
    stop = threading.Event()
    compiled = []

    def toggler():
        while not stop.is_set():
            kpe.install()
            kpe.uninstall()

    def compiler():
        try:
            for _ in range(rounds):
                model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
                model.compile(optimizer="sgd", loss="mse")
                compiled.append(model.compiled)
        finally:
            stop.set()

    run_threads(lambda role: role(), [(toggler,), (compiler,)])
    assert compiled == [True] * rounds
    assert not kpe.is_installed()
