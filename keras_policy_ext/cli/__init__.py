"""The `keras-policy-ext` command: argument parsing and output only.

Exit status: 0 when everything conforms (or passes), 1 when a check finds a
deviation (or a doctest fails), 2 for a usage error or a target that cannot
be imported or built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

from keras_policy_ext.backends import BACKENDS


def _info(args: argparse.Namespace) -> int:
    import keras

    import keras_policy_ext as kpe

    print(f"keras-policy-ext {kpe.__version__}")
    print(f"keras            {keras.__version__}")
    print(f"backend          {keras.backend.backend()}")
    print(f"policy           {kpe.config.dtype_policy().name}")
    return 0


class _Progress:
    """`jax 12/32  torch 32/32 ...` on one line of a terminal's stderr."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.live = sys.stderr.isatty()

    def __call__(self, backend: str, done: int, total: int) -> None:
        self.state[backend] = f"{done}/{total}"
        if self.live:
            line = "  ".join(f"{b} {s}" for b, s in self.state.items())
            print(f"\rchecking: {line}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live and self.state:
            print(file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from keras_policy_ext.cli.formats import FORMATS, summary
    from keras_policy_ext.cli.matrix import run_matrix

    if not args.output and not sys.stderr.isatty():
        print("checking every layer x policy per backend ...", file=sys.stderr)
    progress = _Progress()
    try:
        result = run_matrix(
            backends=args.backends,
            policies=args.policies,
            layers=args.layers,
            targets=args.targets,
            sources=("kpe",) if args.kpe_only else ("kpe", "keras"),
            on_progress=progress,
        )
    except ValueError as e:  # bad names, and TargetError
        progress.close()
        print(f"keras-policy-ext check: error: {e}", file=sys.stderr)
        return 2
    progress.close()
    text = FORMATS[args.format](result)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        print(summary(result))
    else:
        print(text)
    return 0 if result.ok else 1


def _doctest(args: argparse.Namespace) -> int:
    from keras_policy_ext.backends import installed_backends
    from keras_policy_ext.cli.doctests import format_report, run_files

    backends = args.backends or installed_backends()
    missing = [b for b in backends if b not in installed_backends()]
    if missing:
        print(f"keras-policy-ext doctest: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    results = run_files(args.files, backends)
    print(format_report(results))
    failed = any(r["failed"] for rs in results.values() for r in rs)
    return 1 if failed else 0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _backends(value: str) -> list[str]:
    names = _csv(value)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-policy-ext",
        description="Keras dtype policies on keras.ops, checked per backend.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('keras-policy-ext')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print the backend, Keras version and policy")
    info.set_defaults(run=_info)

    check = commands.add_parser(
        "check",
        help="check layers x policies on every installed backend",
        description=(
            "Builds each layer under each policy, one subprocess per backend, and "
            "reports variables, outputs, symbolic dtypes, a training step and "
            "numerics that deviate from the policy. TARGETs are 'module:callable': "
            "the callable takes no arguments and returns (layer, inputs); it is "
            "called inside each policy's scope, so build the layer with dtype=None. "
            "Without TARGETs the built-in zoo of stock Keras layers is checked."
        ),
    )
    check.add_argument("targets", nargs="*", metavar="TARGET", help="module:callable")
    check.add_argument(
        "--backends",
        type=_backends,
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all)",
    )
    check.add_argument(
        "--policies",
        type=_csv,
        help="comma-separated policy names (default: float32, float64, float16, "
        "bfloat16, mixed_float16, mixed_bfloat16)",
    )
    check.add_argument(
        "--layers", type=_csv, default=[], help="comma-separated zoo layer names or parts of names"
    )
    check.add_argument(
        "--kpe-only", action="store_true", help="skip the comparison with Keras's own policies"
    )
    check.add_argument("--format", choices=["table", "json", "junit"], default="table")
    check.add_argument(
        "--output", metavar="FILE", help="write the report to FILE; print only the summary"
    )
    check.set_defaults(run=_check)

    doctest = commands.add_parser(
        "doctest",
        help="run the >>> examples of files once per installed backend",
        description=(
            "Runs the >>> examples of Markdown, reST and Python files (directories: "
            "every such file under them), each backend in its own subprocess. "
            "'# doctest: +SKIP_JAX' (or +SKIP_TORCH, +SKIP_TENSORFLOW) skips an "
            "example on that backend."
        ),
    )
    doctest.add_argument("files", nargs="+", metavar="FILE")
    doctest.add_argument(
        "--backends", type=_backends, help="comma-separated (default: every installed backend)"
    )
    doctest.set_defaults(run=_doctest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    >>> from keras_policy_ext.cli import main
    >>> main(["info"])  # doctest: +ELLIPSIS
    keras-policy-ext ...
    policy           float32
    0
    """
    args = _parser().parse_args(argv)
    return args.run(args)

