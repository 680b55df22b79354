"""`keras_policy_ext.internals.fixes`: each Keras defect reproduced with Keras's own
policies (the comparison, pinned), the layer conforming under kpe policies with
the fix applied, and the fix harmless where Keras needs none.

Stock layers get kpe policies explicitly (`dtype=kpe.DTypePolicy(...)`), never
through the plugin. Every test that applies fixes does it through the `fixes`
fixture, which reverts them and checks that every patched Keras attribute is
back.
"""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_policy_ext as kpe
from keras_policy_ext import internals
from keras_policy_ext.internals import fixes as keras_fixes
from keras_policy_ext.testing import TOLERANCES

BACKEND = keras.backend.backend()
L = keras.layers
RNG = np.random.default_rng(0)
HALF = ("float16", "bfloat16")


def _holds_float64():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.backend.standardize_dtype(ops.zeros((), "float64").dtype) == "float64"


HOLDS_FLOAT64 = _holds_float64()
# TorchModuleWrapper's `output_shape` came with Keras 3.10 (older releases trace the module).
TORCH_OUTPUT_SHAPE = (
    {"output_shape": (2, 2)}
    if "output_shape" in inspect.signature(L.TorchModuleWrapper).parameters
    else {}
)
# Keras's type promotion demotes float64 to float32 on torch and JAX in recent
# releases (keras#23223); older ones keep float64. The float64_promotion fix's
# probe says which this Keras is (docs/keras_fixes.md, fixes by Keras release).
DEMOTES_FLOAT64 = keras_fixes.get("float64_promotion").probe()
# Keras runs Hashing, HashedCrossing and the lookup layers on TensorFlow, which a
# one-backend env of jax or torch does not install.
HAS_TF = importlib.util.find_spec("tensorflow") is not None
NEEDS_TF = pytest.mark.skipif(
    not HAS_TF, reason="Keras runs this preprocessing layer on TensorFlow, not installed here"
)
NO_X64 = pytest.mark.skipif(
    not HOLDS_FLOAT64, reason="JAX without x64 cannot hold float64: refused (test_refusal_*)"
)


def dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _targets():
    """Every (owner, attr) any fix patches, with its current raw value."""
    found = {}
    for fix in keras_fixes.FIXES:
        if not fix.concerns():
            continue
        for target in fix.targets:
            owner = internals.resolve(target.owner)
            found[(target.owner, target.attr)] = vars(owner).get(target.attr, "<inherited>")
    return found


class Fixes:
    """Applies fixes for one test; the fixture reverts them after."""

    def force(self, *names):
        for name in names or [f.name for f in keras_fixes.FIXES]:
            keras_fixes.get(name).apply(force=True)
        return keras_fixes.applied()

    def revert(self):
        keras_fixes.revert_all()


def _fixture(apply_all):
    before = _targets()
    if apply_all:
        keras_fixes.apply_all()
    try:
        yield Fixes()
    finally:
        keras_fixes.revert_all()
        assert keras_fixes.applied() == ()
        after = _targets()
        assert all(after[k] is v for k, v in before.items()), "a Keras attribute was not restored"


@pytest.fixture
def fixes():
    """Every fix whose probe finds its defect here is applied for the test."""
    yield from _fixture(apply_all=True)


@pytest.fixture
def no_fixes():
    """No fix is applied at first; the test forces the ones it names."""
    yield from _fixture(apply_all=False)


def needs(name):
    """Skips (with the reason) where the fix does not concern the running backend."""
    fix = keras_fixes.get(name)
    return pytest.mark.skipif(
        not fix.concerns(),
        reason=f"{name} concerns {', '.join(fix.backends)} only; apply() is a no-op here "
        "(test_apply_on_unconcerned_backend_is_a_noop)",
    )


# --------------------------------------------------------------------------
# The conformance check used by every fix's test.


def _symbolic(args):
    def spec(a):
        if isinstance(a, list):
            return [spec(b) for b in a]
        a = np.asarray(a)
        return keras.KerasTensor(a.shape, "string" if a.dtype.kind == "U" else str(a.dtype))

    return tuple(spec(a) for a in args)


def _np32(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32")), np.float64)


def assert_conforms(factory, args, policy, *, train=True, numerics=True, expected=None):
    """`factory(policy)` builds; variables hold the variable dtype; floating outputs
    have `expected` (default: the compute dtype) eagerly and symbolically; outputs
    are within `TOLERANCES` of a float32 run with the same weights; one training
    step changes the weights and keeps their dtypes. Returns the layer."""
    policy = kpe.DTypePolicy(policy)
    expected = expected or policy.compute_dtype
    layer = factory(policy)
    eager = keras.tree.flatten(layer(*args))
    for v in layer.weights:
        if keras.backend.is_float_dtype(dtype(v)):
            assert (dtype(v), dtype(v.value)) == (policy.variable_dtype,) * 2, v.path
    floats = [y for y in eager if keras.backend.is_float_dtype(dtype(y))]
    assert floats, "no floating output to check"
    assert [dtype(y) for y in floats] == [expected] * len(floats)
    symbolic = keras.tree.flatten(layer(*_symbolic(args)))
    assert [dtype(s) for s in symbolic] == [dtype(y) for y in eager]
    if numerics:
        reference = factory(kpe.DTypePolicy("float32"))
        reference(*args)
        reference.set_weights([_np32(w) for w in layer.weights])
        for y, r in zip(eager, keras.tree.flatten(reference(*args))):
            r = _np32(r)
            error = np.max(np.abs(_np32(y) - r)) / max(np.max(np.abs(r)), 1e-30)
            assert error <= TOLERANCES[policy.compute_dtype], (policy.compute_dtype, error)
    if train:
        inputs = [
            keras.Input(batch_shape=np.shape(a), dtype=str(np.asarray(a).dtype)) for a in args
        ]
        output = keras.tree.flatten(layer(*inputs))[0]
        model = keras.Model(inputs, output)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)
        before = [_np32(v) for v in layer.trainable_weights]
        target = RNG.normal(size=output.shape).astype("float32")
        model.train_on_batch(list(args), target)
        after = [_np32(v) for v in layer.trainable_weights]
        assert all(np.isfinite(a).all() for a in after)
        assert any(not np.array_equal(a, b) for a, b in zip(after, before)), "no update"
        for v in layer.weights:
            if keras.backend.is_float_dtype(dtype(v)):
                assert dtype(v.value) == policy.variable_dtype, v.path
    return layer


class MatmulLayer(keras.layers.Layer):
    """`call(x) = ops.matmul(x, w)`: no `compute_output_shape`, so a symbolic call
    traces `call` through the backend."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")

    def call(self, x):
        return ops.matmul(x, self.w)


class Float32Head(keras.layers.Layer):
    """A head that deliberately returns float32, as keras-hub models do."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")

    def call(self, x):
        return ops.cast(ops.matmul(x, self.w), "float32")


# --------------------------------------------------------------------------
# The table, the probes, apply / revert.


def test_every_fix_is_documented():
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "keras_fixes.md")).read()
    for fix in keras_fixes.FIXES:
        assert fix.issue and fix.defect and fix.cause and fix.backends
        assert f"`{fix.name}`" in docs, fix.name


# What the probes find on Keras 3.15.1 (a JAX process without x64).
EVERYWHERE = {"half_precision_initializers", "category_encoding_dtype", "lookup_encoded_dtype"}
# HashedCrossing's probe runs the layer, on TensorFlow: without it, it finds nothing.
CROSSING = {"hashed_crossing_dtype"} if HAS_TF else set()
# oneDNN's bf16 3-D convolution kernel: found where the CPU selects it (AVX-512 bf16, as
# on the machines CI runs on); its probe is checked apart, where the CPU may lack it.
ONEDNN = {"conv3d_bf16_weight_gradient"}
PROBED = {
    "jax": {*EVERYWHERE, "jax_int64_specs", *CROSSING, "loss_scale_apply_eager"},
    "torch": {
        *EVERYWHERE,
        *CROSSING,
        "torch_symbolic_autocast",
        "float64_promotion",
        "torch_module_wrapper_dtype",
    },
    "tensorflow": EVERYWHERE,
}


@pytest.mark.skipif(BACKEND == "jax" and HOLDS_FLOAT64, reason="pinned for JAX without x64")
@pytest.mark.skipif(
    not keras.__version__.startswith("3.15."),
    reason="pins Keras 3.15; every verified release's probes: test_fixes_by_release.py",
)
def test_probes_reproduce_the_defects_of_keras_3_15():
    assert {f.name for f in keras_fixes.FIXES if f.probe()} - ONEDNN == PROBED[BACKEND]


def test_the_conv3d_probe_reports_what_a_bf16_kernel_gradient_really_is():
    """The probe says True exactly where Keras's own bf16 Conv3D gets a wrong kernel update."""
    from keras_policy_ext.testing import check_layer

    fix = keras_fixes.get("conv3d_bf16_weight_gradient")
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4, 2)).astype("float32")
    report = check_layer(
        lambda: L.Conv3D(4, 3, padding="same"), x, ["mixed_bfloat16"], sources=["keras"]
    )
    wrong = [f for f in report.findings if f.short == "wrong update" or f.short == "train NaN/Inf"]
    assert bool(wrong) is fix.probe(), report
    if BACKEND == "jax":
        assert not fix.probe()  # XLA's convolution is right


def test_apply_all_applies_what_the_probes_find_and_reverts(no_fixes):
    expected = {
        f.name for f in keras_fixes.FIXES if f.concerns() and (f.probe_on_call or f.probe())
    }
    assert set(keras_fixes.apply_all()) == expected  # a probe_on_call fix probes when called
    assert keras_fixes.apply_all() == keras_fixes.applied()  # idempotent


def test_apply_on_unconcerned_backend_is_a_noop(no_fixes):
    before = _targets()
    for fix in keras_fixes.FIXES:
        if not fix.concerns():
            assert fix.probe() is False
            assert fix.apply(force=True) is False and not fix.applied
    assert _targets() == before


def test_no_two_fixes_patch_the_same_attribute():
    """Each fix reverts exactly its own patches, so none may stack on another's."""
    targets = [(t.owner, t.attr) for fix in keras_fixes.FIXES for t in fix.targets]
    assert len(targets) == len(set(targets))


def test_revert_keeps_a_patch_made_over_kpes():
    fix = keras_fixes.get("category_encoding_dtype")
    cls = L.CategoryEncoding
    original = vars(cls)["_encode"]
    fix.apply(force=True)
    try:

        def foreign(self, inputs, count_weights=None):
            return original(self, inputs, count_weights)

        cls._encode = foreign
        fix.revert()
        assert vars(cls)["_encode"] is foreign and not fix.applied
    finally:
        cls._encode = original


def test_get_unknown_fix():
    with pytest.raises(ValueError, match="name='nope'; valid names: half_precision_initializers"):
        keras_fixes.get("nope")


def test_apply_reports_a_missing_target(monkeypatch):
    fix = keras_fixes.get("category_encoding_dtype")
    target = fix.targets[0]._replace(attr="_no_such_method")
    monkeypatch.setattr(fix, "targets", (target,))
    with pytest.raises(RuntimeError, match="cannot apply fix 'category_encoding_dtype'.*_no_such"):
        fix.apply(force=True)
    assert not fix.applied


# --------------------------------------------------------------------------
# 1. Initializers a backend cannot run in half precision.

# (initializer, dtype) pairs Keras 3.15.1 cannot run, per backend.
INITIALIZER_GAPS = {
    "jax": {("Orthogonal", "float16"), ("Orthogonal", "bfloat16")},
    "torch": {("Orthogonal", "float16"), ("Orthogonal", "bfloat16")},
    "tensorflow": {("Orthogonal", "bfloat16")},
}

RECURRENT = {
    "SimpleRNN": (lambda p: L.SimpleRNN(4, dtype=p), lambda: (normal(2, 5, 3),)),
    "LSTM": (lambda p: L.LSTM(4, dtype=p), lambda: (normal(2, 5, 3),)),
    "GRU": (lambda p: L.GRU(4, dtype=p), lambda: (normal(2, 5, 3),)),
    # The backward layer is given: Keras rebuilds a default one from the forward
    # layer's config by policy *name*, which only the plugin maps to a kpe policy.
    **{
        f"Bidirectional({cls.__name__})": (
            lambda p, cls=cls: L.Bidirectional(
                cls(4, dtype=p),
                backward_layer=cls(4, go_backwards=True, dtype=p),
                dtype=p,
            ),
            lambda: (normal(2, 5, 3),),
        )
        for cls in (L.SimpleRNN, L.LSTM, L.GRU)
    },
    "ConvLSTM1D": (lambda p: L.ConvLSTM1D(2, 3, dtype=p), lambda: (normal(2, 3, 6, 2),)),
    "ConvLSTM2D": (lambda p: L.ConvLSTM2D(2, 3, dtype=p), lambda: (normal(2, 3, 5, 5, 2),)),
    "ConvLSTM3D": (lambda p: L.ConvLSTM3D(2, 3, dtype=p), lambda: (normal(2, 2, 4, 4, 4, 1),)),
}


def test_initializer_gaps_of_keras_3_15():
    assert {(n, d) for n, d, _ in keras_fixes.initializer_gaps()} == INITIALIZER_GAPS[BACKEND]


@pytest.mark.parametrize("name", sorted(RECURRENT))
@pytest.mark.parametrize("policy", HALF)
def test_keras_policy_cannot_build_recurrent_in_half(fixes, name, policy):
    factory, inputs = RECURRENT[name]
    layer = factory(keras.DTypePolicy(policy))
    if ("Orthogonal", policy) in INITIALIZER_GAPS[BACKEND]:
        with pytest.raises(Exception, match="(?i)dtype|not implemented|bfloat16|half"):
            layer(*inputs())
    else:
        assert dtype(layer(*inputs())) == policy


@pytest.mark.parametrize("name", sorted(RECURRENT))
@pytest.mark.parametrize("policy", HALF)
def test_recurrent_conforms_in_half(fixes, name, policy):
    factory, inputs = RECURRENT[name]
    assert_conforms(factory, inputs(), policy)


def test_recurrent_builds_in_half_through_deferred_initialization(fixes):
    with keras.StatelessScope():  # variables created here are initialized on exit
        layer = L.LSTM(4, dtype=kpe.DTypePolicy("bfloat16"))
        layer.build((2, 5, 3))
    kernel = layer.cell.recurrent_kernel
    assert (dtype(kernel), dtype(kernel.value)) == ("bfloat16", "bfloat16")
    k = _np32(kernel)  # Orthogonal (4, 16): orthonormal rows, to bfloat16's precision
    assert np.allclose(k @ k.T, np.eye(4), atol=0.05)


def test_half_initializers_fix_keeps_values_keras_can_compute(no_fixes):
    no_fixes.force("half_precision_initializers")
    init = keras.initializers.GlorotUniform(seed=3)
    fixed = L.Dense(3, kernel_initializer=init, dtype=kpe.DTypePolicy("float16"))
    fixed.build((2, 4))
    no_fixes.revert()
    stock = L.Dense(3, kernel_initializer=init, dtype=kpe.DTypePolicy("float16"))
    stock.build((2, 4))
    assert dtype(fixed.kernel.value) == "float16"
    assert np.array_equal(_np32(fixed.kernel), _np32(stock.kernel))


def test_half_initializers_fix_raises_an_initializers_own_error(no_fixes):
    no_fixes.force("half_precision_initializers")

    class Broken(keras.layers.Layer):
        def build(self, input_shape):
            def bad(shape, dtype=None):
                raise ValueError(f"cannot initialize {shape}")

            self.w = self.add_weight(shape=(2,), initializer=bad)

    with pytest.raises(ValueError, match=r"cannot initialize \(2,\)"):
        Broken(dtype=kpe.DTypePolicy("float16")).build((1,))


def test_half_initializers_fix_accepts_legacy_positional_arguments(no_fixes):
    no_fixes.force("half_precision_initializers")

    class Legacy(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight((3, 3), "orthogonal", "bfloat16")

    layer = Legacy(dtype=kpe.DTypePolicy("mixed_bfloat16"))
    layer.build((1,))
    assert dtype(layer.w.value) == "bfloat16"


# --------------------------------------------------------------------------
# 2. CategoryEncoding.

MODES = ("multi_hot", "count", "one_hot")


def category_encoding(mode):
    def factory(policy):
        return L.CategoryEncoding(6, output_mode=mode, dtype=policy)

    shape = (4,) if mode == "one_hot" else (4, 3)
    return factory, (RNG.integers(0, 6, size=shape).astype("int32"),)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", ("mixed_float16", "mixed_bfloat16"))
def test_keras_policy_category_encoding_eager_is_variable_dtype(fixes, mode, policy):
    factory, args = category_encoding(mode)
    layer = factory(keras.DTypePolicy(policy))
    assert dtype(layer(*args)) == "float32"
    assert dtype(layer(*_symbolic(args))) == policy.split("_")[1]


@pytest.mark.parametrize("mode", ("multi_hot", "count"))
@pytest.mark.parametrize("policy", HALF)
def test_keras_policy_category_encoding_counts_in_half(fixes, mode, policy):
    factory, args = category_encoding(mode)
    layer = factory(keras.DTypePolicy(policy))
    if BACKEND == "tensorflow":
        with pytest.raises(Exception, match="not in the list of allowed values"):
            layer(*args)
    else:
        assert dtype(layer(*args)) == policy


CATEGORY_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float32")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", [*CATEGORY_POLICIES, pytest.param("float64", marks=NO_X64)])
def test_category_encoding_conforms(fixes, mode, policy):
    factory, args = category_encoding(mode)
    assert_conforms(factory, args, policy, train=False)


@pytest.mark.parametrize("policy", HALF)
def test_category_encoding_count_weights_conform(fixes, policy):
    layer = L.CategoryEncoding(4, output_mode="count", dtype=kpe.DTypePolicy(policy))
    x = np.array([[0, 1, 1], [3, 3, 2]], "int32")
    weights = np.array([[0.5, 1.0, 2.0], [1.0, 1.0, 0.25]], "float32")
    y = layer(x, count_weights=weights)
    assert dtype(y) == policy
    np.testing.assert_allclose(_np32(y), [[0.5, 3.0, 0, 0], [0, 0, 0.25, 2.0]])


@pytest.mark.parametrize("policy", ("mixed_bfloat16", "bfloat16"))
def test_category_encoding_conforms_in_a_tf_data_pipeline(fixes, policy):
    tf = pytest.importorskip("tensorflow")
    layer = L.CategoryEncoding(4, output_mode="count", dtype=kpe.DTypePolicy(policy))
    x = np.array([[0, 1, 1], [3, 3, 2]], "int32")
    [y] = list(tf.data.Dataset.from_tensors(x).map(layer))
    assert y.dtype.name == "bfloat16"
    np.testing.assert_allclose(y.numpy().astype("float32"), [[1, 2, 0, 0], [0, 0, 1, 2]])


# --------------------------------------------------------------------------
# 3. torch: symbolic calls skip the autocast of variable reads.

MIXED = ("mixed_float16", "mixed_bfloat16")


@needs("torch_symbolic_autocast")
@pytest.mark.parametrize("policy", MIXED)
def test_keras_policy_matmul_layer_symbolic_is_variable_dtype_on_torch(fixes, policy):
    layer = MatmulLayer(dtype=keras.DTypePolicy(policy))
    assert dtype(layer(normal(2, 3))) == policy.split("_")[1]
    assert dtype(layer(keras.KerasTensor((2, 3), "float32"))) == "float32"


@pytest.mark.parametrize("policy", MIXED)
def test_matmul_layer_conforms_under_mixed_policies(fixes, policy):
    assert_conforms(lambda p: MatmulLayer(dtype=p), (normal(2, 3),), policy)


@pytest.mark.parametrize("policy", MIXED)
def test_nested_matmul_layers_conform_in_a_functional_model(fixes, policy):
    p = kpe.DTypePolicy(policy)
    inputs = keras.Input((3,))
    outputs = MatmulLayer(dtype=p)(L.Dense(3, dtype=p)(inputs))
    model = keras.Model(inputs, outputs)
    assert dtype(outputs) == dtype(model(normal(2, 3))) == p.compute_dtype


class ScopedMatmulLayer(MatmulLayer):
    """`MatmulLayer` whose `call` opens its own `keras.name_scope` (no caller)."""

    def call(self, x):
        with keras.name_scope("inner"):
            return ops.matmul(x, self.w)


@pytest.mark.parametrize("policy", (*MIXED, "float64"))
def test_fixes_find_their_layer_under_a_name_scope_opened_in_call(fixes, policy):
    """The fixes that look for the layer running (torch_symbolic_autocast,
    float64_promotion) find it also under a scope its `call` opens."""
    if policy == "float64" and not HOLDS_FLOAT64:
        pytest.skip("JAX without x64 cannot hold float64: refused (test_refusal_*)")
    assert_conforms(lambda p: ScopedMatmulLayer(dtype=p), (normal(2, 3),), policy)


class CallsADense(keras.layers.Layer):
    """A subclassed layer calling a sublayer, without `compute_output_shape`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(3, dtype=self.dtype_policy)

    def call(self, x):
        return ops.tanh(self.dense(x))


@pytest.mark.parametrize("policy", MIXED)
def test_subclassed_layer_calling_a_sublayer_conforms(fixes, policy):
    assert_conforms(lambda p: CallsADense(dtype=p), (normal(2, 4),), policy)


# --------------------------------------------------------------------------
# 4. float64 demoted to float32 by Keras's type promotion.

FLOAT64_LAYERS = {
    "MatmulLayer": (lambda p: MatmulLayer(dtype=p), lambda: (normal(2, 3),)),
    "Dense(use_bias=False)": (
        lambda p: L.Dense(4, use_bias=False, dtype=p),
        lambda: (normal(2, 3),),
    ),
    "Attention": (lambda p: L.Attention(dtype=p), lambda: ([normal(2, 5, 8), normal(2, 5, 8)],)),
    "MultiHeadAttention": (
        lambda p: L.MultiHeadAttention(2, 4, dtype=p),
        lambda: (normal(2, 5, 8), normal(2, 5, 8)),
    ),
    "EinsumDense": (lambda p: L.EinsumDense("ab,bc->ac", 4, dtype=p), lambda: (normal(2, 3),)),
}


@pytest.mark.skipif(
    BACKEND != "torch", reason="torch's matmul casts to the demoted type; JAX x64: subprocess test"
)
@pytest.mark.skipif(
    BACKEND == "torch" and not DEMOTES_FLOAT64,
    reason=f"Keras {keras.__version__} keeps float64 in its type promotion (no defect to pin)",
)
@pytest.mark.parametrize("name", ("MatmulLayer", "Attention", "Dense(use_bias=False)"))
def test_keras_policy_float64_layers_return_float32_on_torch(fixes, name):
    factory, inputs = FLOAT64_LAYERS[name]
    assert dtype(factory(keras.DTypePolicy("float64"))(*inputs())) == "float32"


@NO_X64
@pytest.mark.parametrize("name", sorted(FLOAT64_LAYERS))
def test_float64_layers_conform(fixes, name):
    factory, inputs = FLOAT64_LAYERS[name]
    assert_conforms(factory, inputs(), "float64", train=name != "Attention")


@NO_X64
def test_float64_promotion_leaves_keras_policies_and_other_ops_alone(fixes):
    a = ops.ones((2, 2), "float64")
    # Outside any kpe float64 layer, Keras's promotion is unchanged.
    stock = dtype(ops.matmul(a, a))
    int64 = keras.backend.result_type("int64", "int64")
    # Keras demotes 64-bit types on every backend but TensorFlow where it demotes
    # float64 (3.15; older releases keep both).
    assert int64 == ("int32" if stock != "float64" and BACKEND != "tensorflow" else "int64")
    layer = MatmulLayer(dtype=keras.DTypePolicy("float64"))
    assert dtype(layer(np.ones((2, 3)))) == stock


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's float64 needs an x64 process")
def test_float64_conforms_on_jax_with_x64():
    script = textwrap.dedent(
        """
        import json
        import keras, numpy as np
        from keras import ops
        import keras_policy_ext as kpe
        from keras_policy_ext.internals import fixes as keras_fixes

        class LogAddExp(keras.layers.Layer):
            def call(self, x):
                return ops.logaddexp(x, x)

        def run(p):
            x = np.ones((2, 3), "float64")
            return [
                keras.backend.standardize_dtype(l(x).dtype)
                for l in (LogAddExp(dtype=p), keras.layers.Dense(2, dtype=p))
            ]

        before = run(keras.DTypePolicy("float64"))
        applied = keras_fixes.apply_all()
        print(json.dumps({
            "keras_before": before,
            "applied": applied,
            "kpe": run(kpe.DTypePolicy("float64")),
            "keras": run(keras.DTypePolicy("float64")),
            "refusal": keras_fixes.refusal(
                keras.layers.Dense(2, dtype=kpe.DTypePolicy("float64"))
            ),
        }))
        """
    )
    env = {**os.environ, "JAX_ENABLE_X64": "1", "KERAS_BACKEND": "jax"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(kpe.__file__)), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    # Keras 3.15 demotes logaddexp's float64 with x64; older releases keep it.
    demoted = result["keras_before"][0] == "float32"
    # With x64, float64_promotion applies where Keras demotes and jax_int64_specs
    # does not (int64 is held); hashed_crossing_dtype is applied unprobed (it probes
    # on its first call).
    expected = (PROBED["jax"] | {"hashed_crossing_dtype"}) - {"jax_int64_specs"}
    assert set(result.pop("applied")) == expected | ({"float64_promotion"} if demoted else set())
    stock = "float32" if demoted else "float64"
    assert result == {
        "keras_before": [stock, "float64"],  # logaddexp demoted (3.15), Dense kept
        "kpe": ["float64", "float64"],
        "keras": [stock, "float64"],  # Keras's own policy: unchanged
        "refusal": None,
    }


# --------------------------------------------------------------------------
# 5. JAX without x64: preprocessing layers declare int64 and return int32.


def _index_lookup(cls, vocabulary, policy):
    layer = cls(vocabulary=vocabulary)
    layer.dtype_policy = policy  # IndexLookup drops `dtype=`: it takes the global policy
    return layer


INT_LAYERS = {
    "Hashing": (lambda p: L.Hashing(5, dtype=p), (np.array([[1], [7]], "int64"),), "int64"),
    "HashedCrossing": (
        lambda p: L.HashedCrossing(5, dtype=p),
        ((np.array([1, 2]), np.array([3, 4])),),
        "int64",
    ),
    "IntegerLookup": (
        lambda p: _index_lookup(L.IntegerLookup, [1, 2, 3], p),
        (np.array([[1, 2], [3, 9]], "int64"),),
        "float32",
    ),
    "StringLookup": (
        lambda p: _index_lookup(L.StringLookup, ["a", "b"], p),
        (np.array([["a", "b"], ["c", "a"]]),),
        "mixed_bfloat16",
    ),
    "TextVectorization": (
        lambda p: L.TextVectorization(vocabulary=["a", "b"], dtype=p),
        (np.array(["a b", "b c"]),),
        "float32",
    ),
}


def _call_both(layer, args):
    def symbolic(a):
        if isinstance(a, tuple):
            return [symbolic(b) for b in a]
        return keras.KerasTensor(a.shape, "string" if a.dtype.kind == "U" else str(a.dtype))

    eager = dtype(layer(*[list(a) if isinstance(a, tuple) else a for a in args]))
    return eager, dtype(layer(*[symbolic(a) for a in args]))


@NEEDS_TF
@pytest.mark.skipif(
    BACKEND != "jax" or HOLDS_FLOAT64, reason="JAX without x64 only: elsewhere int64 is held"
)
@pytest.mark.parametrize("name", sorted(INT_LAYERS))
def test_keras_policy_int_outputs_declare_int64_return_int32_on_jax(fixes, name):
    factory, args, policy = INT_LAYERS[name]
    assert _call_both(factory(keras.DTypePolicy(policy)), args) == ("int32", "int64")


@NEEDS_TF
@pytest.mark.parametrize("name", sorted(INT_LAYERS))
def test_int_outputs_agree_eager_and_symbolic(fixes, name):
    factory, args, policy = INT_LAYERS[name]
    eager, symbolic = _call_both(factory(kpe.DTypePolicy(policy)), args)
    assert eager == symbolic == ("int64" if HOLDS_FLOAT64 else "int32")


@NEEDS_TF
def test_int_outputs_agree_in_a_functional_model(fixes):
    inputs = keras.Input((1,), dtype="int64")
    outputs = L.Hashing(5, dtype=kpe.DTypePolicy("int64"))(inputs)
    model = keras.Model(inputs, outputs)
    assert dtype(model(np.array([[3], [4]], "int64"))) == dtype(outputs)


# --------------------------------------------------------------------------
# 7. Lookups encode one_hot / multi_hot / count in their integer value dtype.


def _lookup(cls, vocabulary, mode, policy):
    layer = cls(vocabulary=vocabulary, output_mode=mode)
    layer.dtype_policy = policy  # IndexLookup drops `dtype=`: it takes the global policy
    return layer


ENCODED = {
    **{
        f"IntegerLookup[{mode}]": (
            lambda p, mode=mode: _lookup(L.IntegerLookup, [1, 2, 3], mode, p),
            (np.array([[1], [3]] if mode == "one_hot" else [[1, 2], [3, 9]], "int64"),),
        )
        for mode in ("one_hot", "multi_hot", "count")
    },
    **{
        f"StringLookup[{mode}]": (
            lambda p, mode=mode: _lookup(L.StringLookup, ["a", "b"], mode, p),
            (np.array([["a"], ["c"]] if mode == "one_hot" else [["a", "b"], ["c", "a"]]),),
        )
        for mode in ("one_hot", "multi_hot", "count")
    },
    **{
        f"TextVectorization[{mode}]": (
            lambda p, mode=mode: L.TextVectorization(
                vocabulary=["a", "b"], output_mode=mode, dtype=p
            ),
            (np.array(["a b b", "b c"]),),
        )
        for mode in ("multi_hot", "count")
    },
}


@NEEDS_TF
@pytest.mark.parametrize("name", sorted(ENCODED))
def test_keras_policy_lookup_encodings_are_integer_eagerly(fixes, name):
    factory, args = ENCODED[name]
    eager, symbolic = _call_both(factory(keras.DTypePolicy("float32")), args)
    assert (eager, symbolic) == ("int64" if HOLDS_FLOAT64 else "int32", "float32")


@NEEDS_TF
@pytest.mark.parametrize("name", sorted(ENCODED))
@pytest.mark.parametrize("policy", ("float32", "mixed_bfloat16"))
def test_lookup_encodings_agree_eager_and_symbolic(fixes, name, policy):
    factory, args = ENCODED[name]
    layer = factory(kpe.DTypePolicy(policy))
    assert _call_both(layer, args) == ("float32", "float32")  # floatx, as Keras declares
    reference = factory(keras.DTypePolicy("float32"))
    np.testing.assert_array_equal(_np32(layer(*args)), _np32(reference(*args)))


def test_lookup_encodings_conform_in_a_tf_data_pipeline(fixes):
    tf = pytest.importorskip("tensorflow")
    layer = _lookup(L.StringLookup, ["a", "b"], "count", kpe.DTypePolicy("float32"))
    [y] = list(tf.data.Dataset.from_tensors(np.array([["a", "b", "b"]])).map(layer))
    assert y.dtype.name == "float32"
    np.testing.assert_array_equal(y.numpy(), [[0, 1, 2]])


# --------------------------------------------------------------------------
# 8. HashedCrossing returns its variable dtype (JAX; torch under mixed_float16).


def hashed_crossing(policy):
    return L.HashedCrossing(5, output_mode="one_hot", dtype=policy)


CROSSING_INPUTS = ((np.array([1, 2]), np.array([3, 4])),)


@NEEDS_TF
@pytest.mark.parametrize("policy", MIXED)
def test_keras_policy_hashed_crossing_returns_variable_dtype(fixes, policy):
    eager, symbolic = _call_both(hashed_crossing(keras.DTypePolicy(policy)), CROSSING_INPUTS)
    compute = policy.split("_")[1]
    wrong = BACKEND == "jax" or (BACKEND == "torch" and compute == "float16")
    assert (eager, symbolic) == ("float32" if wrong else compute, compute)


@NEEDS_TF
@pytest.mark.parametrize("policy", (*MIXED, "float32"))
def test_hashed_crossing_conforms(fixes, policy):
    layer = hashed_crossing(kpe.DTypePolicy(policy))
    compute = layer.compute_dtype
    assert _call_both(layer, CROSSING_INPUTS) == (compute, compute)
    reference = hashed_crossing(keras.DTypePolicy("float32"))
    x = [np.array([1, 2]), np.array([3, 4])]
    np.testing.assert_array_equal(_np32(layer(x)), _np32(reference(x)))


# --------------------------------------------------------------------------
# 6. torch: TorchModuleWrapper.


def torch_linear():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


@needs("torch_module_wrapper_dtype")
@pytest.mark.parametrize("policy", ("float16", "bfloat16", "float64"))
def test_keras_policy_torch_module_wrapper_keeps_float32(fixes, policy):
    layer = L.TorchModuleWrapper(torch_linear(), dtype=keras.DTypePolicy(policy))
    assert {dtype(v) for v in layer.weights} == {"float32"}
    with pytest.raises(RuntimeError, match="must have the same dtype|expected .* same dtype"):
        layer(normal(2, 3))


@needs("torch_module_wrapper_dtype")
@pytest.mark.parametrize("policy", ("float16", "bfloat16", "float64", "float32"))
def test_torch_module_wrapper_conforms(fixes, policy):
    # The module is built once (seeded) per factory call, so the float32
    # reference gets its own module, then the same weights.
    # (Keras needs `output_shape` for a symbolic call of a TorchModuleWrapper.)
    assert_conforms(
        lambda p: L.TorchModuleWrapper(torch_linear(), dtype=p, **TORCH_OUTPUT_SHAPE),
        (normal(2, 3),),
        policy,
    )


# --------------------------------------------------------------------------
# Refusals.


@pytest.mark.skipif(BACKEND != "jax" or HOLDS_FLOAT64, reason="JAX without x64 only")
def test_keras_policy_float64_lies_on_jax_without_x64():
    layer = L.Dense(2, dtype=keras.DTypePolicy("float64"))
    y = layer(np.ones((1, 3)))
    assert (dtype(layer.kernel), dtype(layer.kernel.value), dtype(y)) == (
        "float64",
        "float32",
        "float32",
    )
    assert dtype(layer(keras.KerasTensor((1, 3), "float32"))) == "float64"


@pytest.mark.parametrize("policy", ("float64", "mixed_float16", "float32"))
def test_refusal_float64_on_jax_without_x64(policy):
    layer = L.Dense(2, dtype=kpe.DTypePolicy(policy))
    reason = keras_fixes.refusal(layer)
    if BACKEND == "jax" and not HOLDS_FLOAT64 and policy == "float64":
        assert reason.startswith(
            f"keras_policy_ext refuses Dense {layer.name!r} under policy 'float64' "
            "on the jax backend"
        )
        assert "x64" in reason and "JAX_ENABLE_X64=1" in reason
    else:
        assert reason is None
    assert keras_fixes.refusal(L.Dense(2, dtype=keras.DTypePolicy(policy))) is None


@pytest.mark.parametrize("policy", MIXED)
def test_refusal_torch_module_wrapper_under_mixed_policies(policy):
    if BACKEND != "torch":
        assert keras_fixes.refusal(L.Dense(2), kpe.DTypePolicy(policy)) is None
        pytest.skip("TorchModuleWrapper needs the torch backend")
    layer = L.TorchModuleWrapper(torch_linear(), dtype=keras.DTypePolicy(policy))
    with pytest.raises(RuntimeError, match="same dtype"):
        layer(normal(2, 3))  # what Keras does: the comparison
    layer = L.TorchModuleWrapper(torch_linear(), dtype=kpe.DTypePolicy(policy))
    reason = keras_fixes.refusal(layer)
    assert "on the torch backend" in reason and "mat1 and mat2" in reason
    assert f"dtype={policy.split('_')[1]!r}" in reason


def test_refusal_category_encoding_counts_in_half_on_tensorflow_without_the_fix(no_fixes):
    layer = L.CategoryEncoding(4, output_mode="count", dtype=kpe.DTypePolicy("bfloat16"))
    reason = keras_fixes.refusal(layer)
    if BACKEND == "tensorflow":
        assert "TensorFlow's bincount has no bfloat16 kernel" in reason
        no_fixes.force("category_encoding_dtype")
        assert keras_fixes.refusal(layer) is None
    else:
        assert reason is None


# --------------------------------------------------------------------------
# Every fix: harmless where Keras needs none, and never a cast after the fact.

HARMLESS = {
    "Dense": (lambda p: L.Dense(3, dtype=p), lambda: (normal(2, 4),)),
    "LSTM": (lambda p: L.LSTM(3, dtype=p), lambda: (normal(2, 3, 4),)),
    "CategoryEncoding": (
        lambda p: L.CategoryEncoding(4, output_mode="count", dtype=p),
        lambda: (np.array([[0, 1, 1]], "int32"),),
    ),
    "MatmulLayer": (lambda p: MatmulLayer(dtype=p), lambda: (normal(2, 4),)),
}
if HAS_TF:
    HARMLESS["Hashing"] = (
        lambda p: L.Hashing(5, output_mode="one_hot", dtype=p),
        lambda: (np.array([[1], [2]], "int64"),),
    )


@pytest.mark.parametrize("fix", [f.name for f in keras_fixes.FIXES])
@pytest.mark.parametrize("policy", ("float32", "mixed_bfloat16"))
def test_forced_fix_is_harmless_where_keras_needs_none(no_fixes, fix, policy):
    """Under policies Keras already honours for these layers, a force-applied fix
    changes no output and no dtype, for kpe's and Keras's policies alike."""
    if not keras_fixes.get(fix).concerns():
        pytest.skip(f"{fix} concerns {', '.join(keras_fixes.get(fix).backends)} only")

    def run(policy_class):
        results = {}
        for name, (factory, inputs) in HARMLESS.items():
            keras.utils.set_random_seed(1)
            layer = factory(policy_class(policy))
            args = inputs()
            if policy != "float32" and (
                name == "CategoryEncoding" or (name == "MatmulLayer" and BACKEND == "torch")
            ):
                continue  # the defects themselves (fixes 2 and 3), not cases Keras honours
            eager = layer(*args)
            symbolic = layer(*_symbolic(args))
            results[name] = (_np32(eager), dtype(eager), dtype(symbolic))
        return results

    for policy_class in (kpe.DTypePolicy, keras.DTypePolicy):
        RNG_state = RNG.bit_generator.state
        stock = run(policy_class)
        RNG.bit_generator.state = RNG_state
        no_fixes.force(fix)
        fixed = run(policy_class)
        no_fixes.revert()
        RNG.bit_generator.state = RNG_state
        assert stock.keys() == fixed.keys()
        for name in stock:
            assert stock[name][1:] == fixed[name][1:], name
            np.testing.assert_array_equal(stock[name][0], fixed[name][0], err_msg=name)


@pytest.mark.parametrize(
    "policy", ["mixed_float16", "mixed_bfloat16", pytest.param("float64", marks=NO_X64)]
)
def test_float32_head_keeps_float32(no_fixes, policy):
    no_fixes.force()  # every fix for this backend
    layer = assert_conforms(
        lambda p: Float32Head(dtype=p), (normal(2, 4),), policy, expected="float32"
    )
    inputs = keras.Input((4,))
    outputs = layer(L.Dense(4, dtype=kpe.DTypePolicy(policy))(inputs))
    model = keras.Model(inputs, outputs)
    assert dtype(outputs) == dtype(model(normal(2, 4))) == "float32"


def test_fixes_patch_no_common_call_path():
    """The per-call overhead target: no fix patches `__call__`, and of `Layer` only
    `add_weight` (run at build); the `call`s patched are preprocessing layers' own."""
    for fix in keras_fixes.FIXES:
        for target in fix.targets:
            assert target.attr != "__call__", fix.name
            if target.owner == "keras.src.layers.layer.Layer":
                assert target.attr == "add_weight", fix.name
            if target.attr == "call":  # preprocessing layers' own
                assert target.owner.startswith("keras.src.layers.preprocessing."), fix.name
    assert inspect.getattr_static(L.Layer, "__call__") is vars(L.Layer)["__call__"]


# --------------------------------------------------------------------------
# The plugin: install() applies the fixes, uninstall() reverts them, and a
# layer the backend cannot honour is refused when it is built.


def test_install_applies_the_fixes_and_uninstall_reverts_them(no_fixes):
    expected = {
        f.name for f in keras_fixes.FIXES if f.concerns() and (f.probe_on_call or f.probe())
    }
    before = _targets()
    kpe.install()
    try:
        assert set(keras_fixes.applied()) == expected
        assert _targets() != before or not expected
    finally:
        kpe.uninstall()
    assert keras_fixes.applied() == ()
    after = _targets()
    assert all(after[k] is v for k, v in before.items()), "a Keras attribute was not restored"


def test_an_installed_block_builds_recurrent_layers_in_half_by_name(no_fixes):
    with kpe.installed():
        layer = L.LSTM(4, dtype="bfloat16")  # a name: a kpe policy under the plugin
        y = layer(normal(2, 5, 3))
    assert isinstance(layer.dtype_policy, kpe.DTypePolicy)
    assert dtype(y) == dtype(layer.cell.recurrent_kernel.value) == "bfloat16"
    assert keras_fixes.applied() == ()
    if keras_fixes.get("half_precision_initializers").probe():
        with pytest.raises(Exception):  # noqa: B017 (Keras's own policy, its backend's error)
            L.LSTM(4, dtype="bfloat16")(normal(2, 5, 3))


def test_the_plugin_refuses_float64_where_jax_cannot_hold_it(no_fixes):
    default = kpe.config.dtype_policy()
    with kpe.installed():
        if HOLDS_FLOAT64:
            layer = L.Dense(2, dtype="float64")
            assert dtype(layer(normal(2, 3))) == dtype(layer.kernel.value) == "float64"
            return
        with pytest.raises(kpe.PolicyRefusedError) as e:
            L.Dense(2, dtype="float64", name="head")
        with pytest.raises(kpe.PolicyRefusedError):
            with kpe.config.policy_scope("float64"):
                L.LayerNormalization()
        # Keras's own policy object is Keras's business: not refused, as stock Keras.
        L.Dense(2, dtype=keras.DTypePolicy("float64"))
    message = str(e.value)
    assert isinstance(e.value, ValueError)
    for part in ("Dense 'head'", "'float64'", "jax backend", "x64 is disabled", "JAX_ENABLE_X64=1"):
        assert part in message, part
    assert kpe.config.dtype_policy() == default and not kpe.is_installed()
    assert keras_fixes.applied() == ()


@pytest.mark.skipif(BACKEND != "torch", reason="TorchModuleWrapper wraps torch modules")
@pytest.mark.parametrize("policy", MIXED)
def test_the_plugin_refuses_a_torch_module_wrapper_under_a_mixed_policy(no_fixes, policy):
    with kpe.installed(), pytest.raises(kpe.PolicyRefusedError) as e:
        L.TorchModuleWrapper(torch_linear(), dtype=policy)
    for part in ("TorchModuleWrapper", "torch backend", "mat1 and mat2", "single-dtype policy"):
        assert part in str(e.value), part


@pytest.mark.parametrize(
    "name", ("float64", "params=float64,compute=float32", "mixed_bfloat16", "float32")
)
def test_validate_and_the_refusals_decide_what_the_backend_holds_alike(name):
    """One answer to "can this backend hold it": `kpe.validate`'s reason and the
    plugin's refusal end with the same words, or both accept."""
    policy = kpe.DTypePolicy(name)
    reason = keras_fixes.cannot_hold({policy.compute_dtype, policy.variable_dtype})
    ok, why = kpe.validate(policy)
    refused = keras_fixes.refusal(L.Dense(2), policy)
    assert ok is (reason is None) and (refused is None) is (reason is None)
    if reason is not None:
        assert why.endswith(reason) and refused.endswith(reason)
        assert "JAX_ENABLE_X64=1" in reason
