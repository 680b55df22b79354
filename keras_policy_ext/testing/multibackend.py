"""`pytest --kpe-backends=jax,torch,tensorflow`: a test suite once per Keras backend.

Keras reads `KERAS_BACKEND` once, when it is first imported, so each
backend needs its own process. pytest-xdist already starts, feeds, watches
and restarts worker processes and merges their reports into one session
(terminal, `--junitxml`, `-x`); `--kpe-backends` only configures it: one
worker per backend, named after it and started with its `KERAS_BACKEND`
(`--tx popen//id=jax//env:KERAS_BACKEND=jax`), and `--dist each`, which
sends every test to every worker. This module then labels each report with
its backend (`test_x@jax`, `test_y[param@jax]`: an `@` label, as xdist's
own `--dist loadgroup` labels its groups) and adds one summary line per
backend.

>>> from keras_policy_ext.backends import installed_backends
>>> from keras_policy_ext.testing.multibackend import parse_backends, worker_specs
>>> parse_backends("all") == installed_backends()
True
>>> worker_specs(["jax"], {})
['popen//id=jax//env:KERAS_BACKEND=jax//env:TF_CPP_MIN_LOG_LEVEL=3']
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from keras_policy_ext.backends import BACKENDS, check_backends, installed_backends

OUTCOMES = ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")
# Seconds the workers get to exit after ^C before they are killed (xdist's default: 10).
INTERRUPT_EXIT_SECONDS = 2


def parse_backends(value: str) -> list[str]:
    """`all` (every installed backend) or comma-separated names; `ValueError` otherwise.

    >>> from keras_policy_ext.testing.multibackend import parse_backends
    >>> parse_backends("jax,theano")
    Traceback (most recent call last):
    ...
    ValueError: Unknown backend(s): 'theano'; valid backends: jax, tensorflow, torch.
    """
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise ValueError(
            f"--kpe-backends needs 'all' or comma-separated backend names ({', '.join(BACKENDS)})"
        )
    installed = installed_backends()
    if names == ["all"]:
        if not installed:
            raise ValueError(f"--kpe-backends=all: no backend is installed ({', '.join(BACKENDS)})")
        return installed
    check_backends(names)
    missing = [n for n in names if n not in installed]
    if missing:
        raise ValueError(
            f"--kpe-backends: not installed: {', '.join(missing)}; installed: "
            f"{', '.join(installed) or 'none'}"
        )
    return names


def worker_specs(backends: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """xdist's `--tx` specs: one local worker per backend, named after it."""
    quiet = "" if "TF_CPP_MIN_LOG_LEVEL" in environ else "//env:TF_CPP_MIN_LOG_LEVEL=3"
    return [f"popen//id={b}//env:KERAS_BACKEND={b}{quiet}" for b in backends]


def configure(config: pytest.Config, environ: Mapping[str, str]) -> None:
    """With `--kpe-backends` (in pytest's controlling process): set xdist up, add the summary."""
    value = config.getoption("kpe_backends")
    if value is None or hasattr(config, "workerinput"):  # not asked, or an xdist worker
        return
    try:
        backends = parse_backends(value)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if not config.pluginmanager.hasplugin("xdist"):
        raise pytest.UsageError(
            "--kpe-backends runs on pytest-xdist, which is not installed or is disabled "
            "(-p no:xdist): pip install pytest-xdist (or keras-policy-ext[test])"
        )
    given = [
        flag
        for flag, is_set in (
            ("-n", config.getoption("numprocesses", None)),
            ("--tx", config.getoption("tx", None)),
            ("--dist", config.getoption("dist", "no") != "no"),
        )
        if is_set
    ]
    if given:
        raise pytest.UsageError(
            f"--kpe-backends starts one xdist worker per backend itself; it cannot be "
            f"combined with {', '.join(given)}"
        )
    config.option.tx = worker_specs(backends, environ)
    config.option.dist = "each"
    config.pluginmanager.register(BackendsSummary(backends), "kpe-backends")


def configure_worker(config: pytest.Config) -> None:
    """In a `--kpe-backends` worker: ^C belongs to the controlling process.

    A terminal's ^C reaches every process of the run. A worker interrupted
    where it happens to be (importing Keras, in a backend's native code or
    its garbage-collection callback) can abort or print tracebacks; so a
    worker ignores SIGINT, and the controlling process, which reports the
    interrupt, stops the workers (`BackendsSummary.pytest_keyboard_interrupt`).
    """
    if "workerid" not in getattr(config, "workerinput", {}):
        return
    if not config.getoption("kpe_backends", None):
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave signals alone
        pass


def label(nodeid: str, backend: str) -> str:
    """A test id with its backend: after its name, inside its parameters' brackets if any.

    Inside the brackets, pytest's own parsing of test ids (`--junitxml`
    names) still finds the parameters at the end.

    >>> from keras_policy_ext.testing.multibackend import label
    >>> label("tests/test_x.py::test_add", "torch"), label("t.py::test_add[f32]", "jax")
    ('tests/test_x.py::test_add@torch', 't.py::test_add[f32@jax]')
    >>> label(label("t.py::test_add[f32]", "jax"), "jax")  # labelled once
    't.py::test_add[f32@jax]'
    """
    if nodeid.endswith((f"@{backend}", f"@{backend}]")):
        return nodeid
    if nodeid.endswith("]"):
        return f"{nodeid[:-1]}@{backend}]"
    return f"{nodeid}@{backend}"


def _outcome(report: Any) -> str | None:
    """The outcome one report counts as, pytest's way (`None`: it counts as nothing)."""
    if getattr(report, "wasxfail", None) is not None:
        return "xfailed" if report.skipped else "xpassed"
    if report.when == "call" or (report.when != "teardown" and report.skipped):
        return report.outcome
    if report.failed:
        return "failed" if report.when not in ("setup", "teardown") else "errors"
    return None


class BackendsSummary:
    """Labels reports with their backend and sums them up per backend."""

    def __init__(self, backends: Sequence[str]) -> None:
        self.backends = list(backends)
        self.counts = {b: collections.Counter() for b in backends}
        self.collected: dict[str, list[str]] = {}  # each backend's test ids, unlabelled
        self.finished: dict[str, set[str]] = {b: set() for b in backends}
        self.session: pytest.Session | None = None

    def _label(self, report: Any) -> str | None:
        """The report's backend (its worker's `KERAS_BACKEND`: a restarted worker keeps it)."""
        spec = getattr(getattr(getattr(report, "node", None), "gateway", None), "spec", None)
        backend = getattr(spec, "env", {}).get("KERAS_BACKEND")
        if backend not in self.counts:
            return None
        if report.when not in ("setup", "call"):  # its teardown, or its worker crashed in it
            self.finished[backend].add(report.nodeid)
        report.nodeid = label(report.nodeid, backend)
        return backend

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    def pytest_keyboard_interrupt(self) -> None:
        """^C: the workers (which ignore SIGINT) are stopped without xdist's 10 s wait."""
        if self.session is None:
            return
        dsession = self.session.config.pluginmanager.getplugin("dsession")
        manager = getattr(dsession, "nodemanager", None)
        if manager is not None:
            manager.EXIT_TIMEOUT = INTERRUPT_EXIT_SECONDS

    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.collected[node.gateway.spec.env.get("KERAS_BACKEND")] = list(ids)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.session is not None and self.collected:  # progress counts every backend's tests
            self.session.testscollected = sum(map(len, self.collected.values()))
        backend = self._label(report)
        outcome = _outcome(report)
        if backend is not None and outcome is not None:
            self.counts[backend][outcome] += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        backend = self._label(report)
        if backend is not None and report.failed:
            self.counts[backend]["errors"] += 1

    def pytest_report_header(self) -> str:
        return (
            f"kpe backends: {', '.join(self.backends)} (pytest-xdist --dist each: "
            "one worker process per backend)"
        )

    def unfinished(self, backend: str) -> list[str]:
        """The backend's collected tests that did not finish (all of them before collection)."""
        finished = self.finished[backend]
        return [i for i in self.collected.get(backend, ()) if i not in finished]

    def ran(self, backend: str) -> bool:
        """Whether a test ran to an outcome on the backend (a skip is not one)."""
        return any(self.counts[backend][o] for o in OUTCOMES if o != "skipped")

    def lines(self, interrupted: bool = False) -> list[str]:
        """One line per backend: `jax  3 passed, 1 failed, 0 skipped` (and errors, xfails).

        Interrupted, each line names the backend's tests that had not finished.
        """
        width = max(map(len, self.backends))
        lines = []
        for backend in self.backends:
            counts = self.counts[backend]
            if not counts:
                text = "no test ran"
            else:
                text = ", ".join(
                    f"{counts[o]} {o}"
                    for o in OUTCOMES
                    if o in ("passed", "failed", "skipped") or counts[o]
                )
            if interrupted:
                if backend not in self.collected:
                    text += "; interrupted before its tests were collected"
                elif self.unfinished(backend):
                    text += f"; not finished: {_names(self.unfinished(backend))}"
            lines.append(f"{backend.ljust(width)} {text}")
        return lines

    def title(self, interrupted: bool) -> str:
        """The verdict: interrupted, failed on, no test ran on, or passed on every backend."""
        failing = [b for b in self.backends if self.counts[b]["failed"] or self.counts[b]["errors"]]
        idle = [b for b in self.backends if not self.ran(b)]
        if interrupted:
            return "interrupted" + (f", failed on {', '.join(failing)}" if failing else "")
        if failing:
            return f"failed on {', '.join(failing)}"
        if idle:
            return f"no test ran on {', '.join(idle)}"
        return "passed on every backend"

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        terminalreporter.write_sep("=", f"kpe backends: {self.title(interrupted)}")
        for line in self.lines(interrupted):
            terminalreporter.write_line(line)


def _names(ids: Sequence[str], most: int = 5) -> str:
    """Test ids, comma-separated: the first `most`, and how many more."""
    more = len(ids) - most
    return ", ".join(ids[:most]) + (f" and {more} more" if more > 0 else "")
