"""The conformance matrix: layers x policies, one subprocess per backend.

`run_matrix` is what `keras-policy-ext check` runs. Each backend's child
(`python -m keras_policy_ext.cli.matrix IN OUT`) checks the zoo entries
and user targets on its backend and reports progress on stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_policy_ext.backends import BACKENDS, check_backends, installed_backends
from keras_policy_ext.cli.runner import PROGRESS, child_main, run_per_backend


class TargetError(ValueError):
    """A user target that cannot be imported, or returns the wrong thing."""


@dataclasses.dataclass(frozen=True)
class MatrixResult:
    """Per-backend results, and the verdict they add up to.

    `backends[b]` holds `cases` (each a `CaseResult` dict), `notes`, and
    `skipped` (not installed) or `error` (the backend's process crashed or
    timed out: its finished cases are kept). `status()` is the command's
    exit status: 2 when a backend failed to run or no case ran at all (zero
    cases run is never a pass), else 1 when a kpe case has findings (a Keras
    case too with `fail_on_keras`), else 0. `ok` is `status() == 0`.
    """

    backends: dict[str, dict[str, Any]]
    seconds: float

    def cases(self, source: str | None = None) -> list[dict]:
        """Every case that ran, of one policy source or of all."""
        return [
            c
            for r in self.backends.values()
            for c in r.get("cases", ())
            if source is None or c["source"] == source
        ]

    @property
    def incomplete(self) -> list[str]:
        """Why the run is not a complete verdict: failed backends, or no case run."""
        reasons = [f"{b}: {r['error']}" for b, r in self.backends.items() if "error" in r]
        if not self.cases():
            reasons.append("no case ran")
        return reasons

    def status(self, fail_on_keras: bool = False) -> int:
        if self.incomplete:
            return 2
        failing = ("kpe", "keras") if fail_on_keras else ("kpe",)
        return 1 if any(c["findings"] for c in self.cases() if c["source"] in failing) else 0

    @property
    def ok(self) -> bool:
        return self.status() == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "status": self.status(),
            "seconds": round(self.seconds, 1),
            "backends": self.backends,
        }


def load_target(spec: str) -> tuple[str, Callable[[], Any]]:
    """Resolves `"module:callable"`; raises `TargetError` with the reason.

    The callable takes no arguments and returns `(layer, inputs)`: the layer
    or model to check, built with `dtype=None` (it is called inside each
    policy's scope), and the inputs to call it with.

    >>> from keras_policy_ext.cli.matrix import load_target
    >>> load_target("no_such_module_xyz:make")
    Traceback (most recent call last):
    ...
    keras_policy_ext.cli.matrix.TargetError: cannot import 'no_such_module_xyz' for target ...
    """
    module_name, _, attr = _check_spec(spec)
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise TargetError(f"cannot import {module_name!r} for target {spec!r}: {e}") from e
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise TargetError(f"target {spec!r}: {e}") from e
    if not callable(obj):
        raise TargetError(f"target {spec!r} is not callable")
    return spec, obj


def _target_case(spec: str, make: Callable[[], Any]) -> tuple[Callable, Any]:
    """The factory and inputs of a target, checking what it returns."""
    import keras

    def unpack() -> tuple[Any, Any]:
        made = make()
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], keras.Layer)):
            raise TargetError(
                f"target {spec!r} must return (layer, inputs); returned {type(made).__name__}"
            )
        return made

    try:
        inputs = unpack()[1]
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"target {spec!r} failed to build: {type(e).__name__}: {e}") from e
    except SystemExit as e:
        raise TargetError(f"target {spec!r} called sys.exit({e.code!r}) while building") from e
    return (lambda: unpack()[0]), inputs


def keras_can_express(policy: str) -> bool:
    """Whether Keras's own `DTypePolicy` parses this policy name (role specs it cannot)."""
    import keras

    try:
        keras.DTypePolicy(policy)
    except (TypeError, ValueError):
        return False
    return True


def check_here(
    layers: Sequence[str],
    include_zoo: bool,
    targets: Sequence[str],
    policies: Sequence[str],
    sources: Sequence[str],
    emit: Callable[[dict], None],
    seed: int = 0,
) -> None:
    """Checks zoo entries and targets on the running backend, emitting events.

    Emits `{"case": CaseResult dict}` per case as it finishes and `{"note":
    text}` for policies Keras cannot express (checked under kpe only).
    `layers` filters the zoo by name (empty: all of it), which is checked
    only when `include_zoo`. Raises `TargetError` for a target that cannot be
    loaded or built, or exits the process.
    """
    import numpy as np

    from keras_policy_ext.cli.runner import progress
    from keras_policy_ext.testing.checks import check_layer
    from keras_policy_ext.testing.zoo import ZOO, select

    rng = np.random.default_rng(seed)
    entries = select(layers) if include_zoo else []
    if include_zoo and not entries:
        raise TargetError(f"no zoo layer matches {', '.join(layers)}; zoo layers: {', '.join(ZOO)}")
    cases = [(e.name, e.factory, e.inputs(rng)) for e in entries]
    for spec in targets:
        factory, inputs = _target_case(*load_target(spec))
        cases.append((spec, factory, inputs))
    from keras_policy_ext import dtype_policies

    # Role specs by their canonical names: `p=f32,c=bf16` is Keras's mixed_bfloat16.
    policies = [dtype_policies.get(p).name for p in policies]
    policy_sources = {}
    for policy in policies:
        policy_sources[policy] = list(sources)
        if "keras" in sources and not keras_can_express(policy):
            policy_sources[policy].remove("keras")
            emit({"note": f"Keras cannot express {policy!r}: checked under kpe only"})
    for i, (name, factory, inputs) in enumerate(cases):
        for policy in policies:
            emit({"start": f"{name} under {policy!r}"})
            report = check_layer(
                factory, inputs, [policy], name=name, sources=policy_sources[policy]
            )
            for case in report.cases:
                emit({"case": dataclasses.asdict(case)})
        progress(i + 1, len(cases))


def run_matrix(
    backends: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    layers: Sequence[str] = (),
    targets: Sequence[str] = (),
    sources: Sequence[str] = ("kpe", "keras"),
    on_progress: Callable[[str, int, int], None] | None = None,
    on_tick: Callable[[dict[str, float | None]], None] | None = None,
    timeout: float | None = None,
    verbose: bool = False,
) -> MatrixResult:
    """Runs the matrix, each backend in its own subprocess, concurrently.

    `backends=None` means every known backend; those not installed are
    reported as skipped. Without `targets` the zoo is checked, filtered by
    `layers` (names or parts of names); with `targets`, the zoo only when
    `layers` is given too. A bad backend, policy or layer name raises
    `ValueError` before any backend process starts; a `TargetError` in any
    backend is raised here. A backend's process that crashes or runs past
    `timeout` seconds is reported in its result's `error`, with the cases it
    finished.
    """
    from keras_policy_ext import dtype_policies
    from keras_policy_ext.testing.checks import DEFAULT_POLICIES
    from keras_policy_ext.testing.zoo import ZOO, select

    wanted = list(backends) if backends else list(BACKENDS)
    check_backends(wanted)
    policies = list(policies or DEFAULT_POLICIES)
    for policy in policies:
        dtype_policies.get(policy)  # a bad name raises here, not in every child
    include_zoo = bool(layers) or not targets
    if layers and not select(layers):
        raise TargetError(f"no zoo layer matches {', '.join(layers)}; zoo layers: {', '.join(ZOO)}")
    for spec in targets:
        _check_spec(spec)
    available = installed_backends()
    run = [b for b in wanted if b in available]
    args = {
        "layers": list(layers or []),
        "include_zoo": include_zoo,
        "targets": list(targets),
        "policies": policies,
        "sources": list(sources),
    }

    def on_line(backend: str, line: str) -> None:
        if on_progress is not None and line.startswith(PROGRESS):
            done, total = map(int, line.split()[1].split("/"))
            on_progress(backend, done, total)

    start = time.perf_counter()
    children = (
        run_per_backend(
            "keras_policy_ext.cli.matrix",
            args,
            run,
            on_line=on_line,
            on_tick=on_tick,
            timeout=timeout,
            verbose=verbose,
        )
        if run
        else {}
    )
    results: dict[str, dict[str, Any]] = {}
    for backend in wanted:
        if backend not in available:
            results[backend] = {"skipped": f"{backend} is not installed"}
            continue
        child = children[backend]
        events = child.events
        for event in events:
            if "target_error" in event:
                raise TargetError(event["target_error"])
        result: dict[str, Any] = {
            "cases": [e["case"] for e in events if "case" in e],
            "notes": [e["note"] for e in events if "note" in e],
            "seconds": round(child.seconds, 1),
        }
        if not child.finished:
            started = [e["start"] for e in events if "start" in e]
            where = f"; it was checking {started[-1]}" if started else ""
            result["error"] = f"{child.error}{where}"
        result["ok"] = "error" not in result and not any(
            c["findings"] for c in result["cases"] if c["source"] == "kpe"
        )
        results[backend] = result
    return MatrixResult(results, time.perf_counter() - start)


def _check_spec(spec: str) -> tuple[str, str, str]:
    """`spec.partition(":")`, checked: a `TargetError` for a malformed or missing module."""
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise TargetError(
            f"invalid target {spec!r}: expected 'module:callable', such as "
            "'my_pkg.layers:make_block'"
        )
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise TargetError(f"cannot import {module_name!r} for target {spec!r}: no such module")
    return module_name, sep, attr


def _child(args: dict, emit: Callable[[dict], None]) -> None:
    try:
        check_here(
            args["layers"], args["include_zoo"], args["targets"],
            args["policies"], args["sources"], emit,
        )  # fmt: skip
    except TargetError as e:
        emit({"target_error": str(e)})
    except SystemExit as e:
        emit({"target_error": f"a target called sys.exit({e.code!r}) while it was checked"})


if __name__ == "__main__":
    child_main(_child)
