"""One subprocess per Keras backend: Keras reads `KERAS_BACKEND` once, at import.

A backend may have more than one child, each with its own arguments and
environment (`run_children`): JAX reads `JAX_ENABLE_X64` once, at import, too.

A child (`python -m MODULE IN OUT`) reads its arguments as JSON from `IN`
and appends one JSON object per line to `OUT` as it goes, ending with
`{"end": true}`; so what a child finished survives its crash, a timeout or
an interrupt. The children run concurrently, each in its own process group,
and are stopped (with their temporary files removed) when the parent is
interrupted or exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keras_policy_ext.cli.quiet import QUIET_ENV, is_native_log

END = {"end": True}
# A child's progress lines on stderr: `kpe-progress DONE/TOTAL`.
PROGRESS = "kpe-progress"


@dataclasses.dataclass
class ChildResult:
    """What one child wrote, and whether it finished."""

    events: list[dict]  # every JSON line but the end marker, in order
    finished: bool  # wrote the end marker and exited with status 0
    error: str | None  # why it did not finish (None when it did)
    seconds: float


class Emitter:
    """The child's side: appends JSON lines to `OUT`, flushed one by one."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")

    def __call__(self, event: dict) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        self(END)
        self._file.close()


def progress(done: int, total: int) -> None:
    """The child's side: reports `done` of `total` units on stderr."""
    print(f"{PROGRESS} {done}/{total}", file=sys.stderr, flush=True)


def child_main(run: Callable[[dict, Emitter], None]) -> None:
    """The body of a child module's `__main__`: `run(args, emit)`, then the end marker."""
    path_in, path_out = sys.argv[1:3]
    with open(path_in, encoding="utf-8") as f:
        args = json.load(f)
    emit = Emitter(path_out)
    run(args, emit)
    emit.close()


@dataclasses.dataclass(frozen=True)
class Child:
    """One child process of `run_children`: its backend, arguments and environment.

    `env` adds variables for this child alone (they win over the parent's).

    >>> from keras_policy_ext.cli.runner import Child
    >>> Child("jax", {"policies": ["float64"]}, {"JAX_ENABLE_X64": "1"}).backend
    'jax'
    """

    backend: str
    args: dict[str, Any]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def run_per_backend(
    module: str,
    args: dict[str, Any],
    backends: Sequence[str],
    *,
    on_line: Callable[[str, str], None] | None = None,
    on_tick: Callable[[dict[str, float | None]], None] | None = None,
    timeout: float | None = None,
    verbose: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, ChildResult]:
    """Runs `python -m module IN OUT` once per backend, concurrently.

    `run_children` with one child per backend, named by its backend, each
    given `args`; `env` adds variables for every child.

    >>> from keras_policy_ext.cli.runner import run_per_backend
    >>> run_per_backend("keras_policy_ext.cli.matrix", {}, [])
    {}
    """
    children = {b: Child(b, args, dict(env or {})) for b in backends}
    return run_children(
        module, children, on_line=on_line, on_tick=on_tick, timeout=timeout, verbose=verbose
    )


def run_children(
    module: str,
    children: Mapping[str, Child],
    *,
    on_line: Callable[[str, str], None] | None = None,
    on_tick: Callable[[dict[str, float | None]], None] | None = None,
    timeout: float | None = None,
    verbose: bool = False,
) -> dict[str, ChildResult]:
    """Runs `python -m module IN OUT` once per child, concurrently; results by child name.

    Each child runs with `KERAS_BACKEND` set to its backend and its own `env`
    added. `on_line(name, line)` receives each stderr line of a child (native
    log lines only with `verbose`, which also echoes every line to this
    process's stderr, after `[name]`); `on_tick({name: seconds running, or
    None once it stopped})` is called about twice a second. A child still
    running after `timeout` seconds is stopped and reported as timed out.

    >>> from keras_policy_ext.cli.runner import run_children
    >>> run_children("keras_policy_ext.cli.matrix", {})
    {}
    """
    with tempfile.TemporaryDirectory(prefix="kpe-") as tmp:
        running: dict[str, tuple[subprocess.Popen, str, float]] = {}
        tails: dict[str, list[str]] = {name: [] for name in children}
        readers: list[threading.Thread] = []
        try:
            for n, (name, spec) in enumerate(children.items()):
                path_in = os.path.join(tmp, f"{n}.in.json")  # a name may hold any character
                path_out = os.path.join(tmp, f"{n}.out.jsonl")
                with open(path_in, "w", encoding="utf-8") as f:
                    json.dump(spec.args, f)
                child_env = {**os.environ, **QUIET_ENV, **spec.env, "KERAS_BACKEND": spec.backend}
                if verbose:
                    child_env.pop("TF_CPP_MIN_LOG_LEVEL", None)
                child = subprocess.Popen(
                    [sys.executable, "-m", module, path_in, path_out],
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    start_new_session=True,  # ours to stop; a terminal's ^C reaches us only
                )
                running[name] = (child, path_out, time.monotonic())
                reader = threading.Thread(
                    target=_drain, args=(name, child, on_line, tails[name], verbose), daemon=True
                )
                reader.start()
                readers.append(reader)
            timed_out, seconds = _wait(running, timeout, on_tick)
            for reader in readers:
                reader.join()
        finally:
            _stop_all([child for child, _, _ in running.values()])
        return {
            name: _result(name, child, path_out, seconds[name], timed_out, timeout, tails[name])
            for name, (child, path_out, _) in running.items()
        }


def _wait(children, timeout, on_tick) -> tuple[set[str], dict[str, float]]:
    """Waits for every child, stopping those past `timeout`.

    Returns the names of those, and each child's own seconds, from its start
    to its end.
    """
    timed_out: set[str] = set()
    stopped_at: dict[str, float] = {}
    while True:
        now = time.monotonic()
        for backend, (child, _, started) in children.items():
            if backend in stopped_at:
                continue
            if child.poll() is not None:
                stopped_at[backend] = now - started
            elif timeout is not None and now - started > timeout:
                timed_out.add(backend)
                _stop_all([child])
        if on_tick is not None:
            on_tick(
                {
                    b: None if b in stopped_at else time.monotonic() - started
                    for b, (_, _, started) in children.items()
                }
            )
        if len(stopped_at) == len(children):
            return timed_out, stopped_at
        time.sleep(0.5)


def _stop_all(children: Sequence[subprocess.Popen]) -> None:
    """Stops children and all they started (their process groups), together.

    SIGTERM first, then SIGKILL for those still running after 3 s; a ^C
    meanwhile kills them at once.

    Without that, a second ^C (or SIGTERM) while a child is slow to stop
    would leave it, and those after it, running in their own sessions.
    """
    live = [child for child in children if child.poll() is None]
    try:
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for child in live:
                _signal(child, sig)
            deadline = time.monotonic() + grace
            for child in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(max(0.0, deadline - time.monotonic()))
            live = [child for child in live if child.poll() is None]
            if not live:
                return
    except KeyboardInterrupt:
        for child in live:
            _signal(child, signal.SIGKILL)
        for child in live:  # reaped, not left a zombie
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5.0)
        raise


def _signal(child: subprocess.Popen, sig: int) -> None:
    """Sends `sig` to a child's process group, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def _result(backend, child, path_out, seconds, timed_out, timeout, tail) -> ChildResult:
    events = []
    if os.path.exists(path_out):
        with open(path_out, encoding="utf-8") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by the child's end
    finished = bool(events) and events[-1] == END and child.returncode == 0
    if events and events[-1] == END:
        events.pop()
    if finished:
        return ChildResult(events, True, None, seconds)
    if backend in timed_out:
        # What it wrote as it was stopped is the unwinding's traceback, not news.
        return ChildResult(
            events, False, f"timed out after {timeout:g} s (--timeout) and was stopped", seconds
        )
    error = f"exited with status {child.returncode} before finishing"
    last = " | ".join(tail[-3:])
    return ChildResult(events, False, error + (f": {last}" if last else ""), seconds)


def _drain(backend, child, on_line, tail, verbose) -> None:
    """Reads a child's stderr to the end, keeping its last Python lines in `tail`."""
    for line in child.stderr:
        line = line.rstrip("\n")
        if verbose:
            print(f"[{backend}] {line}", file=sys.stderr, flush=True)
        elif is_native_log(line):
            continue
        if on_line is not None:
            on_line(backend, line)
        if line.strip() and not line.startswith(PROGRESS):
            tail.append(line)
            del tail[:-5]
