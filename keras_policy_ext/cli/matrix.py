"""The conformance matrix: layers x policies, one subprocess per backend.

`run_matrix` is what `keras-policy-ext check` runs. Each backend's child
(`python -m keras_policy_ext.cli.matrix IN OUT`) checks the zoo entries
and user targets on its backend and reports progress on stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_policy_ext.backends import BACKENDS, check_backends, installed_backends
from keras_policy_ext.cli.runner import run_per_backend

PROGRESS = "kpe-progress"


class TargetError(ValueError):
    """A user target that cannot be imported, or returns the wrong thing."""


@dataclasses.dataclass(frozen=True)
class MatrixResult:
    """Per-backend results: a `Report` dict, or why the backend did not run.

    `ok` only when at least one case ran, every backend that ran reported no
    finding, and none failed to run: zero cases run is never a pass.
    """

    backends: dict[str, dict[str, Any]]
    seconds: float

    @property
    def ok(self) -> bool:
        ran = [r for r in self.backends.values() if "skipped" not in r]
        return any(r.get("cases") for r in ran) and all(r.get("ok") for r in ran)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 1), "backends": self.backends}


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
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise TargetError(
            f"invalid target {spec!r}: expected 'module:callable', such as "
            "'my_pkg.layers:make_block'"
        )
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
    return (lambda: unpack()[0]), inputs


def check_here(
    layers: Sequence[str],
    include_zoo: bool,
    targets: Sequence[str],
    policies: Sequence[str],
    sources: Sequence[str],
    seed: int = 0,
    on_case: Callable[[int, int], None] | None = None,
) -> dict:
    """Checks zoo entries and targets on the running backend; a `Report` dict.

    `layers` filters the zoo by name (empty: all of it), which is checked
    only when `include_zoo`.
    """
    import numpy as np

    from keras_policy_ext.testing.checks import Report, check_layer
    from keras_policy_ext.testing.zoo import ZOO, select

    rng = np.random.default_rng(seed)
    entries = select(layers) if include_zoo else []
    if include_zoo and not entries:
        raise TargetError(f"no zoo layer matches {', '.join(layers)}; zoo layers: {', '.join(ZOO)}")
    cases = [(e.name, e.factory, e.inputs(rng)) for e in entries]
    for spec in targets:
        factory, inputs = _target_case(*load_target(spec))
        cases.append((spec, factory, inputs))
    results = []
    for i, (name, factory, inputs) in enumerate(cases):
        report = check_layer(factory, inputs, policies, name=name, sources=sources)
        results.extend(report.cases)
        if on_case is not None:
            on_case(i + 1, len(cases))
    return Report(tuple(results)).to_dict()


def run_matrix(
    backends: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    layers: Sequence[str] = (),
    targets: Sequence[str] = (),
    sources: Sequence[str] = ("kpe", "keras"),
    on_progress: Callable[[str, int, int], None] | None = None,
) -> MatrixResult:
    """Runs the matrix, each backend in its own subprocess, concurrently.

    `backends=None` means every known backend; those not installed are
    reported as skipped. Without `targets` the zoo is checked, filtered by
    `layers` (names or parts of names); with `targets`, the zoo only when
    `layers` is given too. A bad backend or policy name raises `ValueError`
    before anything runs; a `TargetError` in any backend is raised here.
    """
    from keras_policy_ext import dtype_policies
    from keras_policy_ext.testing.checks import DEFAULT_POLICIES

    wanted = list(backends) if backends else list(BACKENDS)
    check_backends(wanted)
    policies = list(policies or DEFAULT_POLICIES)
    for policy in policies:
        dtype_policies.get(policy)  # a bad name raises here, not in every child
    available = installed_backends()
    run = [b for b in wanted if b in available]
    args = {
        "layers": list(layers or []),
        "include_zoo": bool(layers) or not targets,
        "targets": list(targets),
        "policies": policies,
        "sources": list(sources),
    }

    def on_line(backend: str, line: str) -> None:
        if on_progress is not None and line.startswith(PROGRESS):
            done, total = map(int, line.split()[1].split("/"))
            on_progress(backend, done, total)

    start = time.perf_counter()
    results = run_per_backend("keras_policy_ext.cli.matrix", args, run, on_line) if run else {}
    for result in results.values():
        if "target_error" in result:
            raise TargetError(result["target_error"])
    for backend in wanted:
        if backend not in available:
            results[backend] = {"skipped": f"{backend} is not installed"}
    ordered = {b: results[b] for b in wanted}
    return MatrixResult(ordered, time.perf_counter() - start)


def _child(path_in: str, path_out: str) -> None:
    with open(path_in) as f:
        args = json.load(f)

    def on_case(done: int, total: int) -> None:
        print(f"{PROGRESS} {done}/{total}", file=sys.stderr, flush=True)

    try:
        result = check_here(
            args["layers"], args["include_zoo"], args["targets"],
            args["policies"], args["sources"],
            on_case=on_case,
        )  # fmt: skip
    except TargetError as e:
        result = {"target_error": str(e)}
    with open(path_out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _child(*sys.argv[1:3])
