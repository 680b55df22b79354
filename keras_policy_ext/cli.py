"""The `keras-policy-ext` command: argument parsing and output only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _info(args: argparse.Namespace) -> int:
    import keras

    import keras_policy_ext as kpe

    print(f"keras-policy-ext {kpe.__version__}")
    print(f"keras            {keras.__version__}")
    print(f"backend          {keras.backend.backend()}")
    print(f"policy           {kpe.config.dtype_policy().name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    >>> from keras_policy_ext.cli import main
    >>> main(["info"])  # doctest: +ELLIPSIS
    keras-policy-ext ...
    policy           float32
    0
    """
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="keras-policy-ext",
        description="Keras dtype policies on keras.ops, checked per backend.",
    )
    parser.add_argument(
        "--version", action="version",
        version=f"%(prog)s {version('keras-policy-ext')}",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="print the backend, Keras version and active policy"
    ).set_defaults(run=_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
