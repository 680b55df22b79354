"""Conformance checks: does a layer store and compute in its policy's dtypes?

`check_layer` builds a layer under each policy (inside
`keras_policy_ext.config.policy_scope`; a kpe policy's case with the plugin
installed, so with kpe's fixes of Keras's defects in place), runs it, and
reports every deviation as a `Finding`: variables (by the dtype the backend really holds), outputs,
symbolic (functional `KerasTensor`) against eager dtypes, one training step
through `train_on_batch` (its update against a float32 step from the same
weights, inputs and target), numerics against a float32 run with the same
weights, non-finite values, and errors building or calling the layer. A
layer the plugin refuses (`keras_policy_ext.PolicyRefusedError`: the backend
cannot honour the policy) is a refused case, with the reason, not a finding.

Every case is seeded (`case_seed`): from the run's seed and the case's
identity (layer, policy, policy source), so a case draws the same weights,
whichever cases ran before it and in whichever process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_policy_ext import config, plugin
from keras_policy_ext.internals.isolation import isolated
from keras_policy_ext.models import sublayers
from keras_policy_ext.policy import as_policy
from keras_policy_ext.testing.zoo import DEFAULT_POLICIES, DEFAULT_SEED
from keras_policy_ext.validation import PolicyRefusedError, validate

# Training steps allowed for a dynamic loss scale to stop skipping updates.
LOSS_SCALE_STEPS = 20

# Largest accepted max-abs error of an output relative to the max-abs of a
# float32 run with the same weights and inputs. A compute dtype with unit
# roundoff u accumulates about sqrt(n) * u over a reduction of n terms; the
# zoo's reductions have at most a few hundred terms, so about 20 u is allowed:
# float16 (u = 2**-11 ~ 4.9e-4) -> 1e-2, bfloat16 (u = 2**-8 ~ 3.9e-3) ->
# 8e-2. float32 and float64 are held to float32's own agreement across
# kernels (1e-5): float64 is compared against the float32 run.
TOLERANCES = {"float16": 1e-2, "bfloat16": 8e-2, "float32": 1e-5, "float64": 1e-5}

# The training step's optimizer: plain SGD, so an update is the gradient times
# this rate. At 1.0 an update is as large as the gradient, well above the
# rounding of a float16/bfloat16 variable, so a wrong gradient shows.
TRAIN_LEARNING_RATE = 1.0

# A variable's update is judged relative to its own float32 update, but never
# to less than this fraction of the layer's largest: a variable whose true
# gradient is zero or nearly (an attention key's bias, which softmax cancels)
# gets rounding noise from terms that cancel, on the scale of the layer's other
# gradients, not of its own.
UPDATE_FLOOR = 0.1

# A variable holds its update rounded to its dtype: each element may differ
# from the float32 step by up to this fraction of its value (one unit in the
# last place, over twice the rounding) before the tolerance is applied.
_ROUNDING = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}

# Names Keras reads as quantized policies (`keras.dtype_policies.get`).
QUANTIZED_PREFIXES = ("int8", "int4", "float8", "gptq", "awq")
OPTIONS = ("output_dtype", "variable_dtypes", "tolerances", "train", "numerics")


def case_seed(seed: int, layer: str, policy: str, source: str) -> int:
    """The seed of one case: a stable hash of the run's seed and the case's identity.

    The same in every process and on every run (SHA-256, not Python's salted
    `hash`), and independent of which cases ran before.

    Args:
        seed: the run's seed (`check --seed`, `check_layer(seed=...)`).
        layer: the case's layer name.
        policy: the policy's name.
        source: `"kpe"` or `"keras"` (or another stream's name, such as
            `"inputs"` for the zoo's inputs).

    Returns:
        An integer in `[0, 2**31)`.

    >>> from keras_policy_ext.testing.checks import case_seed
    >>> seed = case_seed(0, "Dense", "mixed_bfloat16", "kpe")
    >>> seed == case_seed(0, "Dense", "mixed_bfloat16", "kpe"), 0 <= seed < 2**31
    (True, True)
    >>> seed == case_seed(1, "Dense", "mixed_bfloat16", "kpe")
    False
    """
    key = "\0".join([str(seed), layer, policy, source]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") >> 1


def check_options(options: dict, what: str) -> dict:
    """`options` if each key is one of `OPTIONS`; else `TypeError` naming the bad ones."""
    if not isinstance(options, dict):
        raise TypeError(f"{what}: options must be a dict, got {type(options).__name__}")
    unknown = [key for key in options if key not in OPTIONS]
    if unknown:
        raise TypeError(
            f"{what}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(OPTIONS)}"
        )
    return options


@dataclasses.dataclass(frozen=True)
class Finding:
    """One deviation: which layer, policy and backend, what was expected and seen.

    Args:
        layer: the layer's name.
        policy: the policy's name.
        source: `"kpe"` or `"keras"`: whose policy class was checked.
        backend: the backend it ran on.
        check: what was checked (`"output"`, `"variable"`, `"train"`, ...).
        expected: what the policy says.
        seen: what the layer did.
        short: a few words for a table cell.

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> class CastsToFloat32(keras.layers.Layer):
    ...     def call(self, x):
    ...         return keras.ops.cast(x, "float32")
    >>> report = kpe.testing.check_layer(
    ...     CastsToFloat32, np.ones((2, 3), "float32"), ["mixed_float16"], train=False)
    >>> finding = report.findings[0]
    >>> finding.check, finding.expected
    ('output', 'float16')
    """

    layer: str
    policy: str
    source: str
    backend: str
    check: str
    expected: str
    seen: str
    short: str  # a few words for a table cell

    def __str__(self) -> str:
        return (
            f"{self.layer} under {self.source} {self.policy!r} on {self.backend}: "
            f"{self.check}: expected {self.expected}, saw {self.seen}"
        )


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """The findings of one layer under one policy on one backend.

    Args:
        layer: the layer's name.
        policy: the policy's name.
        source: `"kpe"` or `"keras"`: whose policy class was checked.
        backend: the backend it ran on.
        findings: the `Finding`s; none when the layer conforms.
        refused: why kpe refused the layer under this policy
            (`kpe.PolicyRefusedError`), else empty.

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> report = kpe.testing.check_layer(
    ...     lambda: keras.layers.Dense(2), np.ones((1, 3), "float32"), ["float32"], train=False)
    >>> case = report.cases[0]
    >>> case.policy, case.source, case.ok
    ('float32', 'kpe', True)
    """

    layer: str
    policy: str
    source: str  # "kpe" or "keras": whose policy class was checked
    backend: str
    findings: tuple[Finding, ...]
    # Why the layer was refused (`keras_policy_ext.PolicyRefusedError`): the
    # backend cannot honour the policy, and kpe said so when the layer was
    # built. A refusal is not a finding; the case then has none.
    refused: str = ""
    # A fingerprint of the layer's weights as built (SHA-256 of their values):
    # two runs that agree on it checked the same layer.
    digest: str = ""

    @property
    def ok(self) -> bool:
        """Whether the case has no finding (a refused case has none)."""
        return not self.findings


@dataclasses.dataclass(frozen=True)
class Report:
    """All cases of a check; `ok` when no case has a finding.

    `findings` lists every case's findings, `to_dict()` / `to_json()` give
    the structured report and `from_dict` reads it back; `str()` lists the
    findings and refusals.

    Args:
        cases: the `CaseResult`s.
        seed: the run's seed the cases were drawn from (`case_seed`).

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> report = kpe.testing.check_layer(
    ...     lambda: keras.layers.Dense(3), np.ones((2, 4), "float32"),
    ...     policies=["mixed_bfloat16"], train=False)
    >>> report.ok, len(report.cases)
    (True, 1)
    >>> sorted(report.to_dict())
    ['cases', 'ok', 'seed']
    """

    cases: tuple[CaseResult, ...]
    seed: int = DEFAULT_SEED

    @property
    def ok(self) -> bool:
        """Whether no case has a finding."""
        return all(case.ok for case in self.cases)

    @property
    def findings(self) -> list[Finding]:
        """Every case's findings, in the cases' order."""
        return [f for case in self.cases for f in case.findings]

    def to_dict(self) -> dict:
        """The report as plain data.

        Returns:
            `{"ok": bool, "seed": int, "cases": [...]}`, each case a dict of
            its fields, its findings dicts too (JSON-ready; `from_dict` reads
            it back).
        """
        return {
            "ok": self.ok,
            "seed": self.seed,
            "cases": [dataclasses.asdict(c) for c in self.cases],
        }

    def to_json(self) -> str:
        """The report as indented JSON (`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """Rebuilds a report from `to_dict`'s output.

        Args:
            data: what `to_dict()` returned (or its JSON, parsed).

        Returns:
            An equal `Report`.

        >>> import keras, numpy as np, keras_policy_ext as kpe
        >>> report = kpe.testing.check_layer(
        ...     lambda: keras.layers.Dense(2), np.ones((1, 3), "float32"), ["float32"], train=False)
        >>> kpe.testing.Report.from_dict(report.to_dict()) == report
        True
        """
        return cls(
            tuple(
                CaseResult(**{**c, "findings": tuple(Finding(**f) for f in c["findings"])})
                for c in data["cases"]
            ),
            data.get("seed", DEFAULT_SEED),
        )

    def __str__(self) -> str:
        refused = [
            f"- {c.layer} under {c.source} {c.policy!r} on {c.backend}: refused: {c.refused}"
            for c in self.cases
            if c.refused
        ]
        if self.ok:
            verdict = "all conform or are refused" if refused else "all conform"
            return "\n".join([f"{len(self.cases)} case(s), {verdict}", *refused])
        return "\n".join(
            [f"{len(self.findings)} finding(s) in {len(self.cases)} case(s):"]
            + [f"- {f}" for f in self.findings]
            + refused
        )


class ConformanceError(AssertionError):
    """Raised by `assert_conforms`; its message lists every finding.

    >>> import keras_policy_ext as kpe
    >>> issubclass(kpe.testing.ConformanceError, AssertionError)
    True
    """


def _dtype(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and keras.backend.is_float_dtype(_dtype(x))


def _float32(x: Any) -> np.ndarray:
    """`x` cast to float32 on the host: no backend op runs (on JAX, none compiles).

    A backend cast would be one more op per shape and dtype, and on JAX one
    more XLA compilation each; numpy rounds (and overflows to inf) as they do.
    """
    if isinstance(x, keras.Variable):
        x = x.value
    with np.errstate(over="ignore"):
        return np.asarray(ops.convert_to_numpy(x)).astype(np.float32)


def _numpy32(x: Any) -> np.ndarray:
    return _float32(x).astype(np.float64)


def _error(e: BaseException) -> str:
    """`Type: first informative line`, past Keras's "Exception encountered" header."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in str(e).splitlines()]
    lines = [l for l in lines if l]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = lines[1:]
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


def _as_args(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def refuse_quantized(policy: Any) -> None:
    """Raises `ValueError` if `policy` is a quantized policy, or names one.

    The checks hold a layer to a policy's float dtypes, and know no quantized
    dtypes to hold it to. `check_layer` and `keras-policy-ext check` ask this
    before any case runs.

    Args:
        policy: a policy object, or a name or role spec as `check_layer` takes.

    Raises:
        ValueError: `policy` is quantized (`int8_from_float32`, ...), naming it
            and the valid choices.

    >>> from keras_policy_ext.testing.checks import refuse_quantized
    >>> refuse_quantized("mixed_bfloat16")
    >>> refuse_quantized("int8_from_float32")
    Traceback (most recent call last):
    ...
    ValueError: Cannot check the quantized policy 'int8_from_float32': ...
    """
    name = policy.name if isinstance(policy, keras.DTypePolicy) else policy
    if getattr(policy, "quantization_mode", None) is not None or (
        isinstance(name, str) and name.startswith(QUANTIZED_PREFIXES)
    ):
        raise ValueError(
            f"Cannot check the quantized policy {name!r}: the checks hold a layer to a "
            f"policy's float dtypes. Valid policies: float ones such as "
            f"{', '.join(DEFAULT_POLICIES)}, or a role spec such as 'p=f32,c=bf16'."
        )


def _policy(policy: Any, source: str) -> keras.DTypePolicy:
    """The policy object a case of `source` checks; `ValueError` for a quantized one."""
    refuse_quantized(policy)
    name = policy.name if isinstance(policy, keras.DTypePolicy) else policy
    if source == "keras":
        return keras.DTypePolicy(name)
    return as_policy(policy)


class LayerChecker:
    """Checks one layer (or model) factory under one policy after another.

    `check_layer` is this, once per policy. What no policy changes is done
    once per checker, not once per case: the float32 reference that numerics
    compare against is built and run on first use, and from then on only
    given each case's weights before it runs. Arguments as `check_layer`'s.

    >>> import keras, numpy as np
    >>> from keras_policy_ext.testing.checks import LayerChecker
    >>> checker = LayerChecker(lambda: keras.layers.Dense(3), np.ones((2, 4), "float32"))
    >>> [(c.policy, c.source, c.ok) for c in checker.check("mixed_float16", ["kpe", "keras"])]
    [('mixed_float16', 'kpe', True), ('mixed_float16', 'keras', True)]
    >>> [c.policy for c in checker.check("bfloat16")]  # the same reference, new weights
    ['bfloat16']
    """

    def __init__(
        self,
        factory: Callable[[], keras.Layer],
        inputs: Any,
        *,
        name: str | None = None,
        train: bool = True,
        numerics: bool = True,
        tolerances: dict[str, float] | None = None,
        variable_dtypes: dict[str, str] | None = None,
        rules: Any = None,
        output_dtype: str | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        self.label = name or getattr(factory, "__name__", type(factory).__name__)
        self.factory = factory
        self.args = _as_args(inputs)
        self.seed = seed
        self.options = {
            "train": train,
            "numerics": numerics,
            "tolerances": {**TOLERANCES, **(tolerances or {})},
            "variable_dtypes": dict(variable_dtypes or {}),
            "rules": rules,
            "output_dtype": output_dtype,
        }
        self._reference: tuple[keras.Layer | None, str] | None = None
        self._reference_model: tuple[keras.Model | None, str] | None = None

    def check(self, policy: Any, sources: Sequence[str] = ("kpe",)) -> list[CaseResult]:
        """The cases of one policy, one per source (`"kpe"`, `"keras"`), in that order."""
        cases = []
        for source in sources:
            policy_object = _policy(policy, source)
            seed = case_seed(self.seed, self.label, policy_object.name, source)
            cases.append(_Case(self, policy_object, source, seed).run())
        return cases

    def reference(self) -> tuple[keras.Layer | None, str]:
        """`(layer, "")`: the float32 layer, built and run once; `(None, error)` if it cannot be."""
        if self._reference is None:
            try:
                seed = case_seed(self.seed, self.label, "float32", "reference")
                with isolated(seed), config.policy_scope("float32"):
                    layer = self.factory()
                    layer(*self.args)
                self._reference = (layer, "")
            except Exception as e:
                self._reference = (None, _error(e))
        return self._reference

    def reference_model(self) -> tuple[keras.Model | None, str]:
        """`(model, "")`: the float32 layer's training model, made once; else `(None, error)`."""
        if self._reference_model is None:
            layer, error = self.reference()
            if layer is None:
                self._reference_model = (None, error)
                return self._reference_model
            try:
                with config.policy_scope("float32"):
                    self._reference_model = (_training_model(layer, self.args), "")
            except Exception as e:
                self._reference_model = (None, _error(e))
        return self._reference_model


def _training_model(layer: keras.Layer, args: tuple) -> keras.Model:
    """`layer` in a functional model of its first output, compiled for the training step."""
    x = [np.asarray(a) for a in keras.tree.flatten(args)]
    inputs = [keras.Input(batch_shape=a.shape, dtype=str(a.dtype)) for a in x]
    structured = keras.tree.pack_sequence_as(args, inputs)
    output = keras.tree.flatten(layer(*structured))[0]
    model = keras.Model(inputs, output)
    optimizer = keras.optimizers.SGD(TRAIN_LEARNING_RATE)
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    return model


def _host(x: Any) -> np.ndarray:
    """A weight's value on the host: floating ones as float32 (see `_float32`)."""
    return _float32(x) if _is_float(x) else np.asarray(ops.convert_to_numpy(x))


def _digest(values: Sequence[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for value in values:
        sha.update(str(value.dtype).encode())
        sha.update(np.ascontiguousarray(value).tobytes())
    return sha.hexdigest()[:16]


class _Case:
    """Checks one layer factory under one policy; collects findings."""

    def __init__(
        self, checker: LayerChecker, policy: keras.DTypePolicy, source: str, seed: int
    ) -> None:
        self.checker, self.policy, self.source, self.seed = checker, policy, source, seed
        self.label, self.factory = checker.label, checker.factory
        self.args, self.options = checker.args, checker.options
        self.backend = keras.backend.backend()
        self.findings: list[Finding] = []
        self.digest = ""

    def finding(self, check: str, expected: str, seen: str, short: str) -> None:
        self.findings.append(
            Finding(
                self.label, self.policy.name, self.source, self.backend,
                check, expected, seen, short,
            )
        )  # fmt: skip

    def build(self) -> keras.Layer:
        rules = self.options["rules"]
        if rules is None:
            with config.policy_scope(self.policy):
                return self.factory()
        with config.policy_scope(self.policy, rules=rules):
            return self.factory()

    def layer_policies(self, layer) -> list[tuple[str, keras.DTypePolicy]]:
        """`(path, policy)` of the layer and every sublayer, deepest paths first."""
        layers = [layer, *sublayers(layer)]
        found = [(l.path, l.dtype_policy) for l in layers if l.path]
        return sorted(found, key=lambda item: -len(item[0]))

    def expected_variable_dtype(self, path: str, owners) -> str:
        """The policy's variable dtype; under rules, that of the variable's layer."""
        for key, dtype in self.options["variable_dtypes"].items():
            if path == key or path.endswith("/" + key):
                return dtype
        if self.options["rules"] is not None:
            for owner_path, policy in owners:
                if path.startswith(owner_path + "/"):
                    return policy.variable_dtype
        return self.policy.variable_dtype

    def expected_output_dtypes(self, layer, count: int) -> list[str]:
        """The compute dtype; under rules, that of each output's layer.

        A layer whose own code returns another floating dtype (`output_dtype`,
        a float32 head) is held to that dtype, eager and symbolic alike.
        """
        if self.options["output_dtype"] is not None:
            return [self.options["output_dtype"]] * count
        if self.options["rules"] is None:
            return [self.policy.compute_dtype] * count
        names = getattr(layer, "output_names", None)
        if isinstance(layer, keras.Model) and names and len(names) == count:
            return [layer.get_layer(name).compute_dtype for name in names]
        return [layer.compute_dtype] * count

    def run(self) -> CaseResult:
        """The case, seeded: a kpe policy's with the plugin installed, Keras's without it.

        The plugin is installed before the case's streams are seeded: what its
        fixes' probes draw (once per process) never shifts a case's weights.
        """
        kpe = self.source == "kpe" or self.options["rules"] is not None
        with plugin.installed() if kpe else contextlib.nullcontext(), isolated(self.seed):
            return self.checks()

    def checks(self) -> CaseResult:
        try:
            layer = self.build()
        except PolicyRefusedError as e:
            return CaseResult(self.label, self.policy.name, self.source, self.backend, (), str(e))
        except Exception as e:
            layer, error = None, e
        ok, reason = validate(self.policy)
        if not ok:
            self.finding("validate", "a policy this backend supports", reason, "unsupported")
        try:
            if layer is None:
                raise error
            outputs = layer(*self.args)
        except Exception as e:
            self.finding(
                "call", "the layer builds and runs", _error(e), f"error {type(e).__name__}"
            )
        else:
            self.digest = _digest([_host(w) for w in layer.weights])
            self.check_variables(layer)
            eager = self.check_outputs(layer, outputs)
            self.check_symbolic(layer, eager)
            if self.options["numerics"]:
                self.check_numerics(layer, outputs)
            if self.options["train"] and layer.trainable_weights:
                self.check_training_step(layer, outputs)
        return CaseResult(
            self.label, self.policy.name, self.source, self.backend,
            tuple(self.findings), digest=self.digest,
        )  # fmt: skip

    def check_variables(self, layer, when: str = "") -> None:
        owners = self.layer_policies(layer)
        for v in layer.weights:
            if not keras.backend.is_float_dtype(_dtype(v)):
                continue
            expected = self.expected_variable_dtype(v.path, owners)
            declared, held = _dtype(v), _dtype(v.value)
            if declared != expected:
                self.finding(
                    "variable", expected, f"{v.path} is {declared}{when}", f"var {declared}"
                )
            elif held != expected:
                self.finding(
                    "variable",
                    expected,
                    f"{v.path} holds {held}{when} (declares {declared})",
                    f"var holds {held}",
                )

    def check_outputs(self, layer, outputs) -> list[str]:
        flat = keras.tree.flatten(outputs)
        expected = self.expected_output_dtypes(layer, len(flat))
        for i, (y, want) in enumerate(zip(flat, expected)):
            if _is_float(y) and _dtype(y) != want:
                self.finding("output", want, f"output {i} is {_dtype(y)}", f"out {_dtype(y)}")
            if _is_float(y) and not np.isfinite(_numpy32(y)).all():
                self.finding("finite", "finite outputs", f"NaN or Inf in output {i}", "NaN/Inf")
        return [_dtype(y) if hasattr(y, "dtype") else type(y).__name__ for y in flat]

    def check_symbolic(self, layer, eager: list[str]) -> None:
        symbolic_args = keras.tree.map_structure(
            lambda a: keras.KerasTensor(np.shape(a), keras.backend.standardize_dtype(a.dtype)),
            self.args,
        )
        try:
            with config.policy_scope(self.policy):
                flat = keras.tree.flatten(layer(*symbolic_args))
        except Exception as e:
            self.finding(
                "symbolic",
                "the layer runs on KerasTensors",
                _error(e),
                f"symbolic error {type(e).__name__}",
            )
            return
        for i, (s, e) in enumerate(zip([_dtype(s) for s in flat], eager)):
            if s != e:
                self.finding("symbolic", f"KerasTensor {i} is {e}, as eagerly", s, f"symbolic {s}")

    def tolerance(self, layer) -> float | None:
        """The relative error allowed against float32: the largest of the layer's
        compute dtypes'; `None` where there is nothing to compare (a float32
        layer is the reference) or no tolerance is known."""
        compute = {p.compute_dtype for _, p in self.layer_policies(layer)} or {
            self.policy.compute_dtype
        }
        variables = {p.variable_dtype for _, p in self.layer_policies(layer)}
        if compute | variables | {self.policy.variable_dtype} == {"float32"}:
            return None  # it is the reference
        tolerances = [self.options["tolerances"].get(c) for c in compute]
        return None if None in tolerances else max(tolerances)

    def check_numerics(self, layer, outputs) -> None:
        tolerance = self.tolerance(layer)
        if tolerance is None:
            return
        reference, error = self.checker.reference()
        if reference is None:
            self.finding("numerics", "a float32 reference run", error, "no reference")
            return
        try:
            with config.policy_scope("float32"):
                reference.set_weights([_host(w) for w in layer.weights])
                expected = keras.tree.flatten(reference(*self.args))
        except Exception as e:
            self.finding("numerics", "a float32 reference run", _error(e), "no reference")
            return
        for i, (y, r) in enumerate(zip(keras.tree.flatten(outputs), expected)):
            if not (_is_float(y) and _is_float(r)):
                continue
            r32 = _numpy32(r)
            error = np.max(np.abs(_numpy32(y) - r32)) / max(np.max(np.abs(r32)), 1e-30)
            if not error <= tolerance:
                self.finding(
                    "numerics",
                    f"relative error <= {tolerance:g}",
                    f"{error:.3g} in output {i}",
                    f"rel err {error:.2g}",
                )

    def check_training_step(self, layer, outputs) -> None:
        """One SGD step: it runs, keeps the dtypes, updates finitely and, beside a
        float32 step from the same weights, inputs and target, rightly."""
        x = [np.asarray(a) for a in keras.tree.flatten(self.args)]
        weights = [_host(w) for w in layer.weights]
        try:
            with config.policy_scope(self.policy):
                model = _training_model(layer, self.args)
            target = self.training_target(outputs)
            before = [_numpy32(v) for v in layer.trainable_weights]
            steps = self.train_steps(model, x, target, layer, before)
        except Exception as e:
            self.finding(
                "train",
                "one train_on_batch step runs",
                _error(e),
                f"train error {type(e).__name__}",
            )
            return
        self.check_variables(layer, when=" after a training step")
        after = [_numpy32(v) for v in layer.trainable_weights]
        finite = all(np.isfinite(a).all() for a in after)
        if finite and all(np.array_equal(a, b) for a, b in zip(after, before)):
            self.finding(
                "train",
                "a non-zero update",
                f"no variable changed in {steps} step(s)",
                "no update",
            )
        elif self.options["numerics"] and self.check_update(
            layer, weights, x, target, before, after
        ):
            pass  # compared with a float32 step: a NaN or Inf there is a wrong update too
        elif not finite:
            self.finding("train", "finite updates", "NaN or Inf in a variable", "train NaN/Inf")

    def training_target(self, outputs) -> np.ndarray:
        """The layer's first output plus unit noise, drawn from the case's seed.

        The loss is never zero by construction (as it would be for a layer
        that is the identity at init, given its own inputs as the target),
        and its gradient has the same scale whatever the layer's outputs.
        """
        first = _float32(keras.tree.flatten(outputs)[0])
        noise = np.random.default_rng(self.seed).normal(size=first.shape)
        return (np.nan_to_num(first) + noise).astype("float32")

    def check_update(self, layer, weights, x, target, before, after) -> bool:
        """Each variable's update against a float32 step: a finding names the variable.

        The error is the largest difference between the two updates, past the
        rounding of the variable's dtype (`_ROUNDING`), relative to the
        variable's largest float32 update, or to `UPDATE_FLOOR` of the layer's
        largest, whichever is larger, within the tolerance of the compute
        dtype or of the variable's, whichever is larger; a NaN or Inf
        where the float32 update is finite is a wrong update. Returns whether
        the updates were compared: not where there is no tolerance (a float32
        layer is the reference) or the float32 step is not finite itself.
        """
        tolerance = self.tolerance(layer)
        if tolerance is None:
            return False
        model, error = self.checker.reference_model()
        reference = self.checker.reference()[0]
        try:
            if model is None:
                raise RuntimeError(error)
            with config.policy_scope("float32"):
                reference.set_weights(weights)
                model.train_on_batch(x, target)
            expected = [_numpy32(v) - b for v, b in zip(reference.trainable_weights, before)]
        except Exception as e:
            message = str(e) if model is None else _error(e)
            self.finding("train", "a float32 training step", message, "no reference")
            return True
        if not all(np.isfinite(e).all() for e in expected):
            return False
        largest = max((float(np.max(np.abs(e), initial=0.0)) for e in expected), default=0.0)
        for v, b, a, e in zip(layer.trainable_weights, before, after, expected):
            # The optimizer computes the update in the variable's dtype: a
            # bfloat16 variable's update is as precise as bfloat16, whatever
            # the compute dtype (`params=bfloat16,compute=float32`).
            allowed = max(tolerance, self.options["tolerances"].get(_dtype(v), tolerance))
            own = float(np.max(np.abs(e), initial=0.0))
            scale = max(own, UPDATE_FLOOR * largest, 1e-30)
            slack = _ROUNDING.get(_dtype(v), 0.0) * np.abs(a)
            off = np.maximum(np.abs((a - b) - e) - slack, 0.0)
            relative = float(np.max(off, initial=0.0)) / scale
            if not np.isfinite(a).all():
                seen = f"{v.path}: NaN or Inf, where float32's update is finite"
            elif not relative <= allowed:
                seen = f"{v.path}: relative error {relative:.3g}"
            else:
                continue
            self.finding(
                "train", f"an update within {allowed:g} of float32's", seen, "wrong update"
            )
        return True

    @staticmethod
    def train_steps(model, x, target, layer, before) -> int:
        """One step; with loss scaling, up to `LOSS_SCALE_STEPS` while each is skipped.

        A dynamic loss scale starts high (2**15): its first steps may overflow
        in float16 and be skipped, each halving the scale, as in `fit`.
        """
        for step in range(1, LOSS_SCALE_STEPS + 1):
            model.train_on_batch(x, target)
            if not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) or any(
                not np.array_equal(_numpy32(v), b) for v, b in zip(layer.trainable_weights, before)
            ):
                return step
        return LOSS_SCALE_STEPS


def check_layer(
    factory: Callable[[], keras.Layer],
    inputs: Any,
    policies: Iterable[Any] = DEFAULT_POLICIES,
    *,
    name: str | None = None,
    sources: Sequence[str] = ("kpe",),
    train: bool = True,
    numerics: bool = True,
    tolerances: dict[str, float] | None = None,
    variable_dtypes: dict[str, str] | None = None,
    rules: Any = None,
    output_dtype: str | None = None,
    seed: int = DEFAULT_SEED,
) -> Report:
    """Checks a layer under each policy on the running backend.

    Each case checks the variables (declared and held dtypes), the outputs
    (dtype, finite), the symbolic outputs against the eager ones, a training
    step and the numerics against a float32 copy of the layer. kpe's cases
    run with the plugin installed (kpe's fixes of Keras's defects in place);
    a layer it refuses is a case with `refused` set and no finding.

    Args:
        factory: called inside `policy_scope(policy)`; returns the layer or
            model, built with `dtype=None` so that it takes the scope's policy.
        inputs: what the layer is called with: an array, or a tuple of
            positional arguments (arrays, or lists of arrays for merge layers).
        policies: the policies (names or objects) to check under.
        name: the layer's name in the report (default: from the factory).
        sources: whose policy class is checked: `"kpe"`, `"keras"` (Keras's
            own `keras.DTypePolicy`, for comparison) or both.
        train: whether to check a training step.
        numerics: whether to compare with a float32 copy of the layer.
        tolerances: overrides `TOLERANCES` per compute dtype.
        variable_dtypes: variable paths (or their last parts, such as
            `"moving_mean"`) mapped to the dtype a layer documents for them
            instead of the policy's.
        rules: a `keras_policy_ext.Rules`: each layer is built under the
            rules with the policy as their default, and checked against the
            policy its rule picked (variables against their layer's, outputs
            against their output layer's).
        output_dtype: the floating dtype a layer's own code returns whatever
            the policy (a head that casts to float32), checked instead of the
            compute dtype.

    Returns:
        A `Report` of one `CaseResult` per policy and source.

    Each case is seeded from `seed` and its identity (`case_seed`): the
    layer draws the same weights on every run, and its `digest` says so.
    Python's and NumPy's global random states are left as they were.
    The training step (`train`) is one SGD step on a mean squared error
    against the layer's output plus noise; with `numerics`, each
    variable's update is compared with a float32 step from the same
    weights, inputs and target, within the tolerance of the compute dtype.

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> class CastsToFloat32(keras.layers.Layer):
    ...     def call(self, x):
    ...         return keras.ops.cast(x, "float32")
    >>> report = kpe.testing.check_layer(
    ...     CastsToFloat32, np.ones((2, 3), "float32"), ["mixed_float16"])
    >>> print(report.findings[0])
    CastsToFloat32 under kpe 'mixed_float16' on ...: output: expected float16, saw ... float32
    """
    checker = LayerChecker(
        factory, inputs, name=name, train=train, numerics=numerics, tolerances=tolerances,
        variable_dtypes=variable_dtypes, rules=rules, output_dtype=output_dtype, seed=seed,
    )  # fmt: skip
    policies = list(policies)
    for policy in policies:  # a bad or quantized policy raises before any case runs
        for source in sources:
            _policy(policy, source)
    return Report(tuple(case for p in policies for case in checker.check(p, sources)), seed)


def assert_conforms(
    factory: Callable[[], keras.Layer],
    inputs: Any,
    policies: Iterable[Any] = DEFAULT_POLICIES,
    **kwargs: Any,
) -> Report:
    """Checks a layer as `check_layer` does, and raises if any case has a finding.

    Args:
        factory: as in `check_layer`.
        inputs: as in `check_layer`.
        policies: as in `check_layer`.
        **kwargs: `check_layer`'s other options.

    Returns:
        The `Report`, when every case conforms (or is refused).

    Raises:
        ConformanceError: a finding, listing every finding.

    >>> import keras, numpy as np, keras_policy_ext as kpe
    >>> _ = kpe.testing.assert_conforms(
    ...     lambda: keras.layers.LayerNormalization(), np.ones((2, 4), "float32"),
    ...     ["float32", "mixed_bfloat16"])
    """
    report = check_layer(factory, inputs, policies, **kwargs)
    if not report.ok:
        raise ConformanceError(str(report))
    return report
