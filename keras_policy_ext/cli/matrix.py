"""The conformance matrix: layers x policies, one subprocess per backend.

`run_matrix` is what `keras-policy-ext check` runs. Each backend's child
(`python -m keras_policy_ext.cli.matrix IN OUT`) checks the zoo entries
and user targets on its backend and reports progress on stderr. JAX's
float64 policies run in a second JAX child with x64 on (`X64_CHILD`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from keras_policy_ext.backends import BACKENDS, check_backends, installed_backends, jax_x64_on
from keras_policy_ext.cli.runner import PROGRESS, Child, ChildResult, child_main, run_children
from keras_policy_ext.testing.zoo import DEFAULT_SEED


class TargetError(ValueError):
    """A user target that cannot be imported, or returns the wrong thing."""


@dataclasses.dataclass(frozen=True)
class MatrixResult:
    """Per-backend results, and the verdict they add up to.

    `backends[b]` holds `cases` (each a `CaseResult` dict), `notes`, and
    `skipped` (not installed) or `error` (the backend's process crashed or
    timed out: its finished cases are kept). JAX's cases from both its
    processes (see `run_matrix`) are under `jax`. `status()` is the command's
    exit status: 2 when a backend failed to run or no case ran at all (zero
    cases run is never a pass), else 1 when a kpe case has findings (a Keras
    case too with `fail_on_keras`), else 0. `ok` is `status() == 0`.
    """

    backends: dict[str, dict[str, Any]]
    seconds: float
    seed: int = DEFAULT_SEED

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
        return 1 if _failing(self.cases(), fail_on_keras) else 0

    @property
    def ok(self) -> bool:
        return self.status() == 0

    def backend_ok(self, backend: str, fail_on_keras: bool = False) -> bool:
        """One backend's verdict as the run's: it finished, ran cases, none failing."""
        r = self.backends[backend]
        cases = r.get("cases", [])
        return "error" not in r and bool(cases) and not _failing(cases, fail_on_keras)

    def to_dict(self, fail_on_keras: bool = False) -> dict:
        """The result, each backend that ran with its verdict (`ok`) under `fail_on_keras`."""
        backends = {
            b: {**r, "ok": self.backend_ok(b, fail_on_keras)} if "cases" in r else dict(r)
            for b, r in self.backends.items()
        }  # fmt: skip
        status = self.status(fail_on_keras)
        return {
            "ok": status == 0,
            "status": status,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "backends": backends,
        }


def _failing(cases: Sequence[dict], fail_on_keras: bool) -> bool:
    """Whether a case that fails the run (kpe's; Keras's too with `fail_on_keras`) has findings."""
    sources = ("kpe", "keras") if fail_on_keras else ("kpe",)
    return any(c["findings"] for c in cases if c["source"] in sources)


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
    except SystemExit as e:
        raise TargetError(
            f"target {spec!r}: importing {module_name!r} called sys.exit({e.code!r})"
        ) from e
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise TargetError(f"target {spec!r}: {e}") from e
    if not callable(obj):
        raise TargetError(f"target {spec!r} is not callable")
    return spec, obj


def _target_case(spec: str, make: Callable[[], Any]) -> tuple[Callable, Any, dict]:
    """The factory, inputs and options of a target, checking what it returns."""
    import keras

    from keras_policy_ext.testing.checks import check_options

    def unpack() -> tuple[Any, Any, dict]:
        made = make()
        if not (
            isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], keras.Layer)
        ):
            raise TargetError(
                f"target {spec!r} must return (layer, inputs) or (layer, inputs, options); "
                f"returned {type(made).__name__}"
            )
        options = made[2] if len(made) == 3 else {}
        try:
            check_options(options, f"target {spec!r}")
        except TypeError as e:
            raise TargetError(str(e)) from None
        return made[0], made[1], options

    try:
        _, inputs, options = unpack()
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"target {spec!r} failed to build: {type(e).__name__}: {e}") from e
    except SystemExit as e:
        raise TargetError(f"target {spec!r} called sys.exit({e.code!r}) while building") from e
    return (lambda: unpack()[0]), inputs, options


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
    seed: int = DEFAULT_SEED,
    processes: int = 1,
) -> None:
    """Checks zoo entries and targets on the running backend, emitting events.

    Emits `{"case": CaseResult dict}` per case as it finishes and `{"note":
    text}` for policies Keras cannot express (checked under kpe only).
    `layers` filters the zoo by name (empty: all of it), which is checked
    only when `include_zoo`. Raises `TargetError` for a target that cannot be
    loaded or built, or exits the process. With `processes > 1`, helper
    processes (this module, run as a backend's process) check zoo layers
    too, each taking the next unchecked one; the events come out in the same
    order as from one process, and a helper that fails leaves its layers to
    this process.
    """
    from keras_policy_ext.cli.runner import progress

    cases, policies, policy_sources = _plan(
        layers, include_zoo, targets, policies, sources, seed, emit
    )  # fmt: skip
    zoo = len(cases) - len(targets)
    done = 0
    if processes > 1 and zoo >= MIN_SHARED:
        args = {"layers": list(layers), "include_zoo": include_zoo, "targets": []}
        args |= {"policies": policies, "sources": list(sources), "seed": seed}
        with _Helpers(args, processes - 1) as helpers:
            done = helpers.share(cases[:zoo], len(cases), policies, policy_sources, emit)
    for i in range(done, len(cases)):
        _check_entry(*cases[i], policies, policy_sources, emit)
        progress(i + 1, len(cases))


def _plan(layers, include_zoo, targets, policies, sources, seed, emit) -> tuple:
    """`(cases, policies, policy_sources)`: what `check_here` checks, under which names.

    A zoo layer's inputs are drawn from its own seed (`case_seed`), so they are
    the same whichever other layers are checked.
    """
    import numpy as np

    from keras_policy_ext.testing.checks import case_seed
    from keras_policy_ext.testing.zoo import ZOO, select

    entries = select(layers) if include_zoo else []
    if include_zoo and not entries:
        raise TargetError(f"no zoo layer matches {', '.join(layers)}; zoo layers: {', '.join(ZOO)}")
    import keras

    backend = keras.backend.backend()
    cases = []
    for e in entries:
        why = e.unavailable(backend)
        if why is not None:
            emit({"note": f"{why}: not checked on {backend}"})
            continue
        rng = np.random.default_rng(case_seed(seed, e.name, "", "inputs"))
        options = {"output_dtype": e.output_dtype, "seed": seed}
        cases.append((e.name, e.factory, e.inputs(rng), options))
    for spec in targets:
        emit({"start": f"{spec}, importing and building it"})  # named, should it exit here
        factory, inputs, options = _target_case(*load_target(spec))
        cases.append((spec, factory, inputs, {**options, "seed": seed}))
    from keras_policy_ext import dtype_policies

    # Role specs by their canonical names: `p=f32,c=bf16` is Keras's mixed_bfloat16.
    policies = [dtype_policies.get(p).name for p in policies]
    policy_sources = {}
    for policy in policies:
        policy_sources[policy] = list(sources)
        if "keras" in sources and not keras_can_express(policy):
            policy_sources[policy].remove("keras")
            emit({"note": f"Keras cannot express {policy!r}: checked under kpe only"})
    return cases, policies, policy_sources


def _check_entry(name, factory, inputs, options, policies, policy_sources, emit) -> None:
    """One layer under every policy: a `start` event per policy, a `case` event per case."""
    from keras_policy_ext.testing.checks import LayerChecker

    # One float32 reference per layer.
    checker = LayerChecker(factory, inputs, name=name, **options)
    for policy in policies:
        emit({"start": f"{name} under {policy!r}"})
        for case in checker.check(policy, policy_sources[policy]):
            emit({"case": dataclasses.asdict(case)})


def _take(counter: str) -> int:
    """The next layer's index from a counter file the processes share (under a lock)."""
    import fcntl

    with open(counter, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        taken = int(f.read())
        f.seek(0)
        f.write(str(taken + 1))
        f.truncate()
    return taken


def _work(args: dict, emit: Callable[[dict], None]) -> None:
    """A helper's body: checks the layers it takes until none is left.

    Each layer's events come between `{"took": i}` and `{"done": i}`.
    """
    cases, policies, policy_sources = _plan(
        args["layers"], args["include_zoo"], [], args["policies"], args["sources"],
        args["seed"], lambda event: None,
    )  # fmt: skip
    while (i := _take(args["counter"])) < len(cases):
        emit({"took": i})
        _check_entry(*cases[i], policies, policy_sources, emit)
        emit({"done": i})


class _Helpers:
    """Helper processes sharing the zoo with this one (see `check_here`)."""

    def __init__(self, args: dict, count: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="kpe-helpers-")
        self.counter = os.path.join(self.tmp.name, "next")
        with open(self.counter, "w", encoding="utf-8") as f:
            f.write("0")
        self.helpers = []
        for n in range(count):
            path_in, path_out = (os.path.join(self.tmp.name, f"{n}.{x}") for x in ("in", "out"))
            with open(path_in, "w", encoding="utf-8") as f:
                json.dump({**args, "counter": self.counter}, f)
            process = subprocess.Popen(
                [sys.executable, "-m", __spec__.name, path_in, path_out],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.helpers.append(_Helper(process, path_out))

    def __enter__(self) -> _Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        for helper in self.helpers:
            if helper.process.poll() is None:
                helper.process.kill()
            helper.process.wait()
        self.tmp.cleanup()

    def share(self, cases, total, policies, policy_sources, emit) -> int:
        """Checks `cases` with the helpers, emitting them in order (progress of `total`)."""
        from keras_policy_ext.cli.runner import progress

        finished: dict[int, list[dict]] = {}
        emitted = 0

        def flush() -> None:
            nonlocal emitted
            for helper in self.helpers:
                for event in helper.read():
                    if "start" in event:
                        emit(event)  # at once: what runs now, should this process be stopped
                finished.update(helper.finished)
                helper.finished.clear()
            while emitted in finished:
                for event in finished.pop(emitted):
                    if "start" not in event:
                        emit(event)
                emitted += 1
                progress(emitted, total)

        while (i := _take(self.counter)) < len(cases):
            events: list[dict] = []
            _check_entry(*cases[i], policies, policy_sources, _tee(events, emit))
            finished[i] = events
            flush()
        while any(helper.process.poll() is None for helper in self.helpers):
            flush()
            time.sleep(0.05)
        flush()
        # A helper that failed, or was stopped, left the layers it did not finish.
        for i in [i for i in range(emitted, len(cases)) if i not in finished]:
            events = []
            _check_entry(*cases[i], policies, policy_sources, _tee(events, emit))
            finished[i] = events
        flush()
        return len(cases)


class _Helper:
    """One helper process, and its events read so far, filed by layer."""

    def __init__(self, process: subprocess.Popen, path: str) -> None:
        self.process, self.path = process, path
        self.offset = 0
        self.current: int | None = None
        self.pending: dict[int, list[dict]] = {}
        self.finished: dict[int, list[dict]] = {}

    def read(self) -> list[dict]:
        """The events written since the last read (whole lines only)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a last line may be cut short
        self.offset += len(complete)
        events = [json.loads(line) for line in complete.splitlines()]
        for event in events:
            if "took" in event:
                self.current = event["took"]
                self.pending[self.current] = []
            elif "done" in event:
                self.finished[event["done"]] = self.pending.pop(event["done"])
            elif self.current is not None and "end" not in event:
                self.pending[self.current].append(event)
        return events


def _tee(events: list[dict], emit: Callable[[dict], None]) -> Callable[[dict], None]:
    """Keeps events for their turn; a `start` is also emitted at once (what runs now)."""

    def keep(event: dict) -> None:
        events.append(event)
        if "start" in event:
            emit(event)

    return keep


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
    cache_dir: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
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

    JAX holds float64 only with x64 on, which JAX reads once, at import: unless
    `JAX_ENABLE_X64` is on here already, the policies with a float64 compute
    or variable dtype run in a second JAX process with `JAX_ENABLE_X64=1`
    (`X64_CHILD`, so named to `on_progress` and `on_tick`), the others in
    the first. Their cases are reported under `jax`, in the order one process
    gives (layer by layer, each under the policies in the order given), with
    a note; a failure of either process is `jax`'s `error`.

    Every case is seeded from `seed` and its identity (layer, policy, policy
    source; `keras_policy_ext.testing.checks.case_seed`): the same run gives
    the same weights, inputs, training targets and findings, however its
    layers are shared between processes. A quantized policy
    (`int8_from_float32`, ...) raises `ValueError`: the check knows no
    quantized dtypes to hold a layer to.

    `cache_dir` (made if missing) keeps the programs JAX's processes compile
    between runs (JAX's persistent compilation cache, `JAX_COMPILATION_CACHE_DIR`,
    which it sets for them over any the environment sets): a later run with the
    same versions compiles only what is new (figures: docs/benchmarks.md,
    "Check speed"). Without it, each JAX process and
    its helper compile into a temporary cache, removed at the end, unless the
    environment names one. TensorFlow's and torch's processes run their ops
    eagerly and compile nothing. An empty path, or one that cannot be a
    writable directory, raises `ValueError` before any process starts.
    """
    from keras_policy_ext.testing.zoo import DEFAULT_POLICIES, ZOO, select

    wanted = list(dict.fromkeys(backends)) if backends else list(BACKENDS)
    check_backends(wanted)
    named: dict[str, tuple[str, bool]] = {}  # policy: (its canonical name, float64 in it)
    for policy in policies or DEFAULT_POLICIES:
        if policy in DEFAULT_POLICIES:  # those need no Keras loaded here to be known
            named[policy] = (policy, policy == "float64")
            continue
        from keras_policy_ext import dtype_policies
        from keras_policy_ext.testing.checks import refuse_quantized

        parsed = dtype_policies.get(policy)  # a bad name raises here, not in every child
        refuse_quantized(parsed)
        dtypes = (parsed.compute_dtype, parsed.variable_dtype)
        named[policy] = (parsed.name, "float64" in dtypes)
    # A policy named twice (`p=f32,c=bf16` is `mixed_bfloat16`) is checked once.
    firsts: dict[str, str] = {}
    for policy in named:
        firsts.setdefault(named[policy][0], policy)
    policies = list(firsts.values())
    include_zoo = bool(layers) or not targets
    unmatched = [pattern for pattern in layers or () if not select([pattern])]
    if unmatched:
        raise TargetError(
            f"no zoo layer matches {', '.join(unmatched)}; zoo layers: {', '.join(ZOO)}"
        )
    targets = list(dict.fromkeys(targets))
    for spec in targets:
        _check_spec(spec)
    cache = _cache_directory(cache_dir) if cache_dir is not None else None
    available = installed_backends()
    run = [b for b in wanted if b in available]
    args = {
        "layers": list(layers or []),
        "include_zoo": include_zoo,
        "targets": list(targets),
        "policies": policies,
        "sources": list(sources),
        "seed": seed,
    }

    def on_line(name: str, line: str) -> None:
        if on_progress is not None and line.startswith(PROGRESS):
            done, total = map(int, line.split()[1].split("/"))
            on_progress(name, done, total)

    jax_env = {} if cache is None else jax_cache_env(cache)
    children = _children(run, args, [p for p in policies if named[p][1]], jax_env)
    start = time.perf_counter()
    finished = run_children(
        "keras_policy_ext.cli.matrix",
        children,
        on_line=on_line,
        on_tick=on_tick,
        timeout=timeout,
        verbose=verbose,
    )
    layer_order = [e.name for e in select(layers)] if include_zoo else []
    order = _case_order([*layer_order, *targets], [named[p][0] for p in policies])
    results: dict[str, dict[str, Any]] = {}
    for backend in wanted:
        if backend not in available:
            results[backend] = {"skipped": f"{backend} is not installed"}
            continue
        parts = [(n, finished[n]) for n, child in children.items() if child.backend == backend]
        results[backend] = _backend_result(backend, parts, order)
        if cache is not None and backend == "jax":
            results[backend]["notes"].append(f"JAX's compiled programs are kept in {cache}")
            if "error" in results[backend]:
                results[backend]["notes"].append(STOPPED_CACHE_NOTE.format(cache=cache))
    result = MatrixResult(results, time.perf_counter() - start, seed)
    for backend in results:
        if "cases" in results[backend]:
            results[backend]["ok"] = result.backend_ok(backend)
    return result


# JAX (0.10) writes a cache entry in place and never rewrites one that exists: a
# process stopped while writing can leave an entry cut short, read as a miss from
# then on (a warning in the process's stderr), so that program is compiled anew
# on every later run.
STOPPED_CACHE_NOTE = (
    "a JAX process did not finish: an entry it was writing in {cache} may be cut "
    "short, and JAX never rewrites one; remove the directory if later runs stay slow"
)


def jax_cache_env(cache: str) -> dict[str, str]:
    """What JAX's processes get to keep every program they compile in `cache`.

    Explicit (`--cache-dir`), so it wins over JAX's cache settings in the
    environment; JAX's own variables, so that any version of kpe takes them.

    >>> from keras_policy_ext.cli.matrix import jax_cache_env
    >>> jax_cache_env("/tmp/c")["JAX_COMPILATION_CACHE_DIR"]
    '/tmp/c'
    """
    return {"JAX_COMPILATION_CACHE_DIR": cache, **JAX_CACHE_ENV, **JAX_CACHE_ON}


def _cache_directory(path: str | os.PathLike) -> str:
    """`path` (`~` expanded) made absolute, and made if missing.

    `ValueError` for an empty path, and one that cannot be a writable directory.

    >>> import tempfile
    >>> from keras_policy_ext.cli.matrix import _cache_directory
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _cache_directory(f.name)
    Traceback (most recent call last):
    ...
    ValueError: cache directory '...' is a file, not a directory
    """
    if not os.fspath(path):  # an unset variable in `--cache-dir "$DIR"`: not the cwd
        raise ValueError("cache directory '' is empty: name a directory")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"cache directory {path!r} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot make cache directory {path!r}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK | os.X_OK):  # JAX would only warn, in its stderr
        raise ValueError(f"cache directory {path!r} is not writable")
    return path


# JAX reads `JAX_ENABLE_X64` once, at import: without it, JAX holds no float64
# (a float64 variable holds float32). JAX's float64 policies run in a second JAX
# process of JAX's own with x64 on, so the others run as a user runs them (x64
# off, JAX's default). That process checks float64 alone (a sixth of JAX's cases
# by default) and takes no helper (`CHILD_PROCESSES`): with the first JAX
# process's helper, the machine's cores are shared by enough processes already.
X64_CHILD = "jax (x64)"
X64_ENV = {"JAX_ENABLE_X64": "1"}
X64_NOTE = "JAX's float64 cases ran in a second JAX process, with JAX_ENABLE_X64=1"


def _children(
    run: Sequence[str], args: dict, float64: Sequence[str], jax_env: Mapping[str, str]
) -> dict[str, Child]:
    """A child per backend to run; JAX's `float64` policies split off into `X64_CHILD`.

    `jax_env` adds variables for JAX's processes.
    """
    children = {
        backend: Child(backend, args, dict(jax_env) if backend == "jax" else {})
        for backend in run
    }  # fmt: skip
    if "jax" not in children or not float64 or jax_x64_on():
        return children
    rest = [p for p in args["policies"] if p not in float64]
    x64 = Child(
        "jax", {**args, "policies": list(float64), "processes": 1}, {**jax_env, **X64_ENV}
    )  # fmt: skip
    split: dict[str, Child] = {}
    for name, child in children.items():
        if name == "jax":
            if rest:  # float64 alone: the x64 process is JAX's only one
                split[name] = Child("jax", {**args, "policies": rest}, dict(jax_env))
            split[X64_CHILD] = x64
        else:
            split[name] = child
    return split


def _case_order(layers: Sequence[str], policies: Sequence[str]) -> Callable[[dict], tuple]:
    """A sort key: cases in the order one process gives, by layer, then by policy."""
    layer_at = {name: i for i, name in reversed(list(enumerate(layers)))}
    policy_at = {name: i for i, name in reversed(list(enumerate(policies)))}
    return lambda case: (
        layer_at.get(case["layer"], len(layer_at)),
        policy_at.get(case["policy"], len(policy_at)),
    )


def _backend_result(
    backend: str, parts: Sequence[tuple[str, ChildResult]], order: Callable[[dict], tuple]
) -> dict[str, Any]:
    """One backend's result from its processes' events (JAX's: one or two processes)."""
    cases: list[dict] = []
    notes: list[str] = []
    errors: list[str] = []
    for name, child in parts:
        events = child.events
        for event in events:
            if "target_error" in event:
                raise TargetError(event["target_error"])
        cases += [e["case"] for e in events if "case" in e]
        notes += [e["note"] for e in events if "note" in e]
        if not child.finished:
            started = [e["start"] for e in events if "start" in e]
            where = f"; it was checking {started[-1]}" if started else ""
            process = "" if name == backend else f"{name} process: "
            errors.append(f"{process}{child.error}{where}")
    if any(name == X64_CHILD for name, _ in parts):
        cases.sort(key=order)  # stable: each case's sources stay in their order
        notes.append(X64_NOTE)
    result: dict[str, Any] = {
        "cases": cases,
        "notes": list(dict.fromkeys(notes)),
        "seconds": round(max(child.seconds for _, child in parts), 1),
    }
    if errors:
        result["error"] = "; ".join(errors)
    return result


def _check_spec(spec: str) -> tuple[str, str, str]:
    """`spec.partition(":")`, checked: a `TargetError` for a malformed or missing module."""
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise TargetError(
            f"invalid target {spec!r}: expected 'module:callable', such as "
            "'my_pkg.layers:make_block'"
        )
    if not _module_found(module_name):
        raise TargetError(f"cannot import {module_name!r} for target {spec!r}: no such module")
    return module_name, sep, attr


def _module_found(module_name: str) -> bool:
    """Whether `module_name` is on the import path, found without running any of its code.

    `importlib.util.find_spec("pkg.mod")` imports `pkg` and so runs its
    `__init__`, which may exit, raise, print or hang in the command's own
    process: here each package is found on disk, and only the backends'
    processes import it. The current directory is searched first, as
    `python -m` (how those processes start) puts it first on their path.
    """
    parts = module_name.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    top = parts[0]
    found = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
    if found is None:
        try:
            found = importlib.util.find_spec(top)  # a top-level name runs no code
        except (ImportError, ValueError):
            return False
    for i, part in enumerate(parts[1:], 1):
        package = sys.modules.get(".".join(parts[:i]))  # imported already: its own path
        where = getattr(package, "__path__", None) or (found and found.submodule_search_locations)
        if not where:
            return False
        found = importlib.machinery.PathFinder.find_spec(part, list(where))
    return found is not None


# What a backend's process sets before Keras loads, where the environment does
# not set it already (README: "Check speed"). Each case runs a handful of ops on
# tiny tensors: torch's pool of threads per process only adds hand-offs, the more
# so as the backends' processes share the machine's cores. JAX compiles each
# eager op once per shape and dtype and runs it a few times: LLVM's optimization
# passes cost more than they save (JAX's documented switch for that case; XLA's
# graph passes, and so the ops and their dtypes, are unchanged).
CHILD_ENV = {
    "jax": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    "torch": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}
# XLA's CPU code generator from before its MLIR fusion emitters (the default
# until 2025) compiles a tiny program about a third faster, the same HLO ops in
# the same dtypes. XLA aborts on a flag it does not know, so it is only passed to
# the jaxlib versions it was verified with.
JAX_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
JAX_XLA_FLAG_JAXLIB = ("0.10.",)
# JAX's compilation cache, every program written to it: an op JAX traces anew on
# each call (a recurrent layer's `scan`, a loss scale's `cond`) compiles once, not
# once per call, and JAX's helper process (below) reuses what the other compiled.
# Unless `JAX_COMPILATION_CACHE_DIR` names one, the cache is a temporary directory
# of the backend's process, removed at its end.
JAX_CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}
JAX_CACHE_ON = {"JAX_ENABLE_COMPILATION_CACHE": "true"}  # `jax_cache_env`: over the user's
# How many processes check a backend's zoo, on a machine with more than one core.
# JAX compiles every op of every layer in every dtype, which makes its process the
# longest by far: a helper process takes layers too (the next one left, as each
# finishes one), on the cores the other backends' processes leave when they end.
CHILD_PROCESSES = {"jax": 2}
MIN_SHARED = 4  # fewer zoo layers than this are not worth a helper's start


@contextlib.contextmanager
def _child_environment(backend: str) -> Iterator[None]:
    """Sets `CHILD_ENV[backend]` (JAX: the flag and the cache too) where unset.

    Meant for a backend's own process, before Keras loads there: the variables
    stay set, and only a cache directory made here is removed at the end. A
    variable the environment sets already wins, and a `JAX_COMPILATION_CACHE_DIR`
    it names is used as it is. SIGTERM unwinds the process as ^C does, so that
    what it made (this cache, its helpers' files) is removed when it is stopped.
    """
    for key, value in CHILD_ENV.get(backend, {}).items():
        os.environ.setdefault(key, value)
    cache = None
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "fusion_emitters" not in flags and _jaxlib_verified():
            os.environ["XLA_FLAGS"] = f"{flags} {JAX_XLA_FLAG}".strip()
        for key, value in JAX_CACHE_ENV.items():
            os.environ.setdefault(key, value)
        if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            cache = tempfile.mkdtemp(prefix="kpe-jax-cache-")
            os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _jaxlib_verified() -> bool:
    try:
        return version("jaxlib").startswith(JAX_XLA_FLAG_JAXLIB)
    except PackageNotFoundError:
        return False


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds the child (so its cache directory is removed), as ^C would."""
    raise KeyboardInterrupt


def _child(args: dict, emit: Callable[[dict], None]) -> None:
    backend = os.environ.get("KERAS_BACKEND", "")
    processes = args.get("processes") or CHILD_PROCESSES.get(backend, 1)
    if _cores() < 2:
        processes = 1
    with _child_environment(backend):
        if "counter" in args:  # a helper of another backend's process
            _work(args, emit)
            return
        try:
            check_here(
                args["layers"], args["include_zoo"], args["targets"],
                args["policies"], args["sources"], emit,
                seed=args.get("seed", DEFAULT_SEED), processes=processes,
            )  # fmt: skip
        except TargetError as e:
            emit({"target_error": str(e)})
        except SystemExit as e:
            emit({"target_error": f"a target called sys.exit({e.code!r}) while it was checked"})


if __name__ == "__main__":
    child_main(_child)
