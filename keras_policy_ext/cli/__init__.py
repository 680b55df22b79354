"""The `keras-policy-ext` command: argument parsing and output only.

Exit status: 0 when everything conforms (or passes), 1 when a check finds a
deviation (or a doctest fails), 2 for a usage error, a target that cannot be
imported or built, a doc file that cannot be read or run to its end, or a
backend process that crashed or timed out.
`--version` and `--help` import neither Keras nor a backend.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from keras_policy_ext.backends import BACKENDS
from keras_policy_ext.cli.quiet import native_logs_filtered
from keras_policy_ext.roles import ROLE_KEYS
from keras_policy_ext.testing.zoo import DEFAULT_SEED

# How often, at most, a run without a terminal reports its progress.
HEARTBEAT_SECONDS = 5.0
DEFAULT_TIMEOUT = 1800.0
DOCTEST_TIMEOUT = 600.0  # per file


def _info(args: argparse.Namespace) -> int:
    with native_logs_filtered(not args.verbose):
        import warnings

        import keras

        import keras_policy_ext as kpe
        from keras_policy_ext.internals import fixes, versions

        policy = kpe.config.dtype_policy().name
        refused = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                kpe.install()  # what install() applies is what the report says
            except RuntimeError as error:
                refused = str(error)
            report = fixes.report()
            kpe.uninstall()
    standing = {"older": "older than", "verified": "in", "newer": "newer than"}[versions.standing()]
    print(f"keras-policy-ext {kpe.__version__}")
    print(f"keras            {keras.__version__}, {standing} the verified range")
    print(f"verified range   {versions.VERIFIED_RANGE}")
    print(f"backend          {keras.backend.backend()}")
    print(f"policy           {policy}")
    print(f"plugin           {'cannot be installed: ' + refused if refused else 'installs'}")
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning):
            print(f"warning          {warning.message}")
    print("fixes            (as install() leaves them on this backend)")
    width = max(len(name) for name, _, _ in report)
    for name, status, detail in report:
        print(f"  {name:<{width}}  {status:<13}  {detail}")
    return 1 if refused else 0


class _Progress:
    """Progress on stderr: one live line on a terminal, else a line per backend every few s."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.live = sys.stderr.isatty()
        self.last_report = time.monotonic()
        self.drawn = False
        self.running: dict[str, float | None] = {}  # each backend's seconds, None once done
        self.printed: dict[str, str] = {}  # without a terminal: each backend's last line

    def __call__(self, backend: str, done: int, total: int) -> None:
        self.state[backend] = f"{done}/{total} layers"
        if self.live:
            self.redraw()

    def redraw(self) -> None:
        """The terminal's live line: each backend's layers, and its seconds while it runs."""
        running = {**{b: None for b in self.state}, **self.running}
        parts = []
        for backend, seconds in running.items():
            state = self.state.get(backend, "starting")
            parts.append(f"{backend} {state}" + ("" if seconds is None else f" ({seconds:.0f} s)"))
        print(f"\rchecking: {'  '.join(parts)}\033[K", end="", file=sys.stderr, flush=True)
        self.drawn = True

    def tick(self, running: dict[str, float | None]) -> None:
        """Each backend's state, as the run goes.

        On a terminal, the live line every second, so that a backend starting
        or hung is seen to be so; else, at most every `HEARTBEAT_SECONDS`, a
        line for each backend whose state changed since its last line.
        """
        every = 1.0 if self.live else HEARTBEAT_SECONDS
        if time.monotonic() - self.last_report < every:
            return
        self.last_report = time.monotonic()
        if self.live:
            self.running = dict(running)
            self.redraw()
            return
        for backend, seconds in running.items():
            state = self.state.get(backend, "starting")
            if seconds is None:
                state += ", done"
            if self.printed.get(backend) == state:
                continue  # a log gets a line when something changed, not a heartbeat
            self.printed[backend] = state
            when = "" if seconds is None else f" ({seconds:.0f} s)"
            print(f"checking {backend}: {state}{when}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live and self.drawn:
            print(file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from keras_policy_ext.cli.formats import FORMATS, summary
    from keras_policy_ext.cli.matrix import run_matrix

    policies = [*(args.policies or []), *(args.policy or [])] or None
    if not args.output and not sys.stderr.isatty():
        print("checking every layer x policy per backend ...", file=sys.stderr)
    from keras_policy_ext.testing.zoo import DEFAULT_POLICIES  # loads no Keras

    if args.output:
        problem = _unwritable(args.output)
        if problem:
            print(f"keras-policy-ext check: error: {problem}", file=sys.stderr)
            return 2
    if any(p not in DEFAULT_POLICIES for p in policies or ()):
        # Parsing another policy's name needs Keras: first, with its native log
        # lines filtered. The default names, the zoo and a target's module (found
        # on disk, its code run only in the backends' processes) are known without
        # Keras, so the backends' processes start at once.
        with native_logs_filtered(not args.verbose):
            import keras  # noqa: F401
    progress = _Progress()  # outside the filter: a terminal's live line stays live
    try:
        result = run_matrix(
            backends=args.backends,
            policies=policies,
            layers=args.layers,
            targets=args.targets,
            sources=("kpe",) if args.kpe_only else ("kpe", "keras"),
            on_progress=progress,
            on_tick=progress.tick,
            timeout=args.timeout,
            verbose=args.verbose,
            cache_dir=args.cache_dir,
            seed=args.seed,
        )
    except ValueError as e:  # bad names, a bad cache directory, and TargetError
        progress.close()
        print(f"keras-policy-ext check: error: {e}", file=sys.stderr)
        return 2
    progress.close()
    text = FORMATS[args.format](
        result, every_row=args.all or args.format != "table", fail_on_keras=args.fail_on_keras
    )
    if not _report("check", args.output, text, lambda: summary(result, args.fail_on_keras)):
        return 2
    return result.status(args.fail_on_keras)


def _doctest(args: argparse.Namespace) -> int:
    from keras_policy_ext.backends import installed_backends
    from keras_policy_ext.cli.doctests import FORMATS, check_files, check_setup, run_files, summary
    from keras_policy_ext.cli.doctests import status as doctest_status

    backends = args.backends or installed_backends()
    missing = [b for b in backends if b not in installed_backends()]
    if missing or not backends:
        what = ", ".join(missing) if missing else "no backend (jax, tensorflow, torch)"
        print(f"keras-policy-ext doctest: not installed: {what}", file=sys.stderr)
        return 2
    try:
        files = check_files(args.files)
        setup = check_setup(args.setup)
    except ValueError as e:
        print(f"keras-policy-ext doctest: error: {e}", file=sys.stderr)
        return 2
    problem = _unwritable(args.output) if args.output else ""
    if problem:
        print(f"keras-policy-ext doctest: error: {problem}", file=sys.stderr)
        return 2
    results = run_files(files, backends, setup=setup, plugin=args.plugin, timeout=args.timeout)
    text = FORMATS[args.format](results)
    if not _report("doctest", args.output, text, lambda: summary(results)):
        return 2
    return doctest_status(results)


def _report(command: str, output: str | None, text: str, summary: Callable[[], str]) -> bool:
    """Writes the report to `output` and prints the summary, or prints the report.

    A report that cannot be written after all is printed instead, with the
    error on stderr; returns `False` then.
    """
    if not output:
        print(text)
        return True
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as e:
        print(text)
        print(
            f"keras-policy-ext {command}: error: cannot write the report to {output!r}: "
            f"{e.strerror or e}",
            file=sys.stderr,
        )
        return False
    print(summary())
    return True


def _unwritable(path: str) -> str:
    """Why a report cannot be written to `path` (checked before the run), else `""`.

    The file is opened for writing, as the report will be, and a file this
    made is removed again: what the system refuses (a missing directory,
    `/proc`, a read-only file system) is refused here, before the run.

    >>> from keras_policy_ext.cli import _unwritable
    >>> _unwritable("/proc/no-such-dir/report.json")
    "cannot write the report to '/proc/no-such-dir/report.json': No such file or directory"
    """
    if os.path.isdir(path):
        return f"cannot write the report to {path!r}: it is a directory"
    if os.path.isfile(path) and os.statvfs(path).f_blocks == 0:
        return f"cannot write the report to {path!r}: its file system (/proc, /sys) holds no data"
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        return f"cannot write the report to {path!r}: {e.strerror or e}"
    if not existed:
        os.remove(path)
    return ""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _names(option: str, split: Callable[[str], list[str]] = _csv) -> Callable[[str], list[str]]:
    """An option's type: its comma-separated names; none at all is a usage error."""

    def parse(value: str) -> list[str]:
        names = split(value)
        if not names:
            raise argparse.ArgumentTypeError(f"{option} is empty: name at least one")
        return names

    return parse


def _policies(value: str) -> list[str]:
    """Comma-separated policies; a role spec's own `key=dtype` parts stay together.

    >>> from keras_policy_ext.cli import _policies
    >>> _policies("float32,p=f32,c=bf16,mixed_float16,params=float64,compute=float32")
    ['float32', 'p=f32,c=bf16', 'mixed_float16', 'params=float64,compute=float32']
    >>> _policies("c=bf16,c=f16")  # a role given again starts the next spec
    ['c=bf16', 'c=f16']
    >>> _policies("p=f32,c=bf16,params=float16,compute=float16")  # in any spelling
    ['p=f32,c=bf16', 'params=float16,compute=float16']
    """
    policies: list[str] = []
    keys: set[str] = set()
    for part in _csv(value):
        key, is_role, _ = part.partition("=")
        key = ROLE_KEYS.get(key.strip(), key.strip())  # `p` and `params` are one role
        if is_role and policies and keys and key not in keys:
            policies[-1] += "," + part
            keys.add(key)
        else:
            policies.append(part)
            keys = {key} if is_role else set()
    return policies


def _backends(value: str) -> list[str]:
    """`--backends` of `check` and `doctest`: comma-separated names, or `all` (every installed).

    >>> from keras_policy_ext.cli import _backends
    >>> from keras_policy_ext.backends import installed_backends
    >>> _backends("all") == installed_backends(), _backends("torch,jax")
    (True, ['torch', 'jax'])
    """
    names = _names("--backends")(value)
    if names == ["all"]:
        from keras_policy_ext.backends import installed_backends

        names = installed_backends()
        if not names:
            raise argparse.ArgumentTypeError(
                f"all: no backend is installed ({', '.join(BACKENDS)})"
            )
        return names
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}"
        )
    return names


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {value!r}")
    return seed


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


def _subcommand(
    commands: Any, name: str, run: Callable, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand running `run(args)`, with `--verbose`."""
    parser = commands.add_parser(name, help=help, description=description or help)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="keep the backends' native log lines (TensorFlow, absl, oneDNN) and echo "
        "the backend processes' stderr",
    )
    parser.set_defaults(run=run)
    return parser


def _report_options(
    parser: argparse.ArgumentParser,
    formats: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    timeout_help: str = "stop a backend's process after SECONDS (default %(default)g); exit 2",
) -> None:
    """`--format`, `--output` and `--timeout`, as every reporting subcommand has them."""
    parser.add_argument("--format", choices=list(formats), default=formats[0])
    parser.add_argument(
        "--output", metavar="FILE", help="write the report to FILE; print only the summary"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=timeout, metavar="SECONDS", help=timeout_help
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-policy-ext",
        description="Keras dtype policies on keras.ops, checked per backend.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('keras-policy-ext')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _subcommand(
        commands,
        "info",
        _info,
        "print the backend, the Keras version against the verified range, the policy "
        "and each fix of a Keras defect: applied, skipped or failed",
    )

    check = _subcommand(
        commands,
        "check",
        _check,
        "check layers x policies on every installed backend",
        "Builds each layer under each policy, one subprocess per backend, and "
        "reports variables, outputs, symbolic dtypes, a training step (its update "
        "against a float32 step) and numerics that deviate from the policy. Every "
        "case is seeded from --seed and its layer, policy and policy source. "
        "TARGETs are 'module:callable': the callable takes no arguments and returns "
        "(layer, inputs), or (layer, inputs, options) with options a dict of "
        "check_layer's keyword options for what the layer does on purpose: "
        "output_dtype, variable_dtypes, tolerances, train, numerics. It is called "
        "inside each policy's scope, so build the layer with dtype=None. Without "
        "TARGETs the built-in zoo of stock Keras layers is checked.",
    )
    check.add_argument("targets", nargs="*", metavar="TARGET", help="module:callable")
    check.add_argument(
        "--backends",
        type=_backends,
        action="extend",
        help=f"comma-separated, of {', '.join(BACKENDS)}, or 'all' (the default: every "
        "installed backend)",
    )
    check.add_argument(
        "--policies",
        type=_names("--policies", _policies),
        action="extend",
        help="comma-separated policies (default: float32, float64, float16, bfloat16, "
        "mixed_float16, mixed_bfloat16); a role spec keeps its own commas: "
        "--policies float32,p=f32,c=bf16",
    )
    check.add_argument(
        "--policy",
        action="append",
        metavar="POLICY",
        help="one policy, repeatable (--policy p=f32,c=bf16 --policy float16)",
    )
    check.add_argument(
        "--layers",
        type=_names("--layers"),
        action="extend",
        default=[],
        help="comma-separated zoo layer names or parts of names",
    )
    check.add_argument(
        "--kpe-only", action="store_true", help="skip the comparison with Keras's own policies"
    )
    check.add_argument(
        "--fail-on-keras",
        action="store_true",
        help="findings under Keras's own policies fail the run too (exit status 1)",
    )
    check.add_argument(
        "--all", action="store_true", help="table: every row, not only findings and refusals"
    )
    check.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        help="the run's seed (default %(default)s): each case's weights, inputs and "
        "training target are drawn from it and the case's layer, policy and policy "
        "source, so a run gives the same findings every time; recorded in json and junit",
    )
    check.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep the programs JAX compiles in DIR (made if missing) between runs: a "
        "later run compiles only what is new (default: none kept, unless "
        "JAX_COMPILATION_CACHE_DIR names a directory; DIR wins over it)",
    )
    _report_options(check, ["table", "markdown", "json", "junit"])

    doctest = _subcommand(
        commands,
        "doctest",
        _doctest,
        "run the examples of docs once per installed backend",
        "Runs the >>> examples and prompt-less ```python blocks of Markdown and reST "
        "files, and the >>> examples of Python files' docstrings (directories: "
        "every such file under them), each backend in its own subprocess, the "
        "files one after another: a file that crashes its process or runs past "
        "--timeout is that file's error, and a new process goes on with the next. "
        "'# doctest: +SKIP_JAX' (or +SKIP_TORCH, +SKIP_TENSORFLOW) skips an "
        "example on that backend, '+SKIP_WITHOUT_TENSORFLOW' (or _JAX, _TORCH) where "
        "that library is not installed. A file's prompt-less blocks and >>> "
        "examples run in its order as one script (a block that raises stops it); "
        "'```python notest' or '<!-- skip: next -->' opts a block out. Exit status: "
        "0 when every example passed, 1 when one failed, 2 when a file could not be "
        "read (before anything runs), imported or run to its end, no example ran, "
        "or a file named had nothing to run.",
    )
    doctest.add_argument("files", nargs="+", metavar="FILE")
    doctest.add_argument(
        "--backends",
        type=_backends,
        action="extend",
        help=f"comma-separated, of {', '.join(BACKENDS)}, or 'all' (the default: every "
        "installed backend)",
    )
    doctest.add_argument(
        "--setup",
        action="append",
        metavar="CODE",
        help="Python code run in each file's namespace before its examples, e.g. "
        '"import keras, numpy as np; from keras import ops" (repeatable: joined by lines)',
    )
    doctest.add_argument(
        "--plugin",
        action="store_true",
        help="run the examples with kpe installed (kpe.install()): Keras's own API on kpe policies",
    )
    _report_options(
        doctest,
        ["table", "markdown", "json", "junit"],
        timeout=DOCTEST_TIMEOUT,
        timeout_help="stop a file's examples after SECONDS (default %(default)g): that "
        "file's error (exit 2), and the next file runs in a new process",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    >>> from keras_policy_ext.cli import main
    >>> main(["info"])  # doctest: +ELLIPSIS
    keras-policy-ext ...
    policy           float32
    plugin           installs
    fixes            (as install() leaves them on this backend)
      half_precision_initializers  applied        its probe finds the defect
    ...
    0
    """
    args = _parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"keras-policy-ext {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like ^C: the backend processes are stopped, temporary files removed."""
    raise KeyboardInterrupt
