"""The `cnnzoo` console script.

It only mounts the subcommands that each package owns (`cnnzoo.zoo.cli`, `cnnzoo.serving.cli`,
`cnnzoo.interpret.cli`); a package's `register(subparsers)` adds its commands and binds each to a
handler with `set_defaults(func=...)`. Handlers import torch, onnxruntime and grpc themselves,
so `cnnzoo --help` stays fast.

Errors the project raises on purpose (`cnnzoo.errors.CnnzooError`) become one line on stderr and
a non-zero exit code; anything else propagates so that bugs stay visible.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cnnzoo import __version__
from cnnzoo.errors import CnnzooError

# Packages whose `cli.register` contributes subcommands, in help order.
_COMMAND_PACKAGES = ("cnnzoo.zoo", "cnnzoo.serving", "cnnzoo.interpret")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnzoo",
        description="Train, serve and understand convolutional image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for package in _COMMAND_PACKAGES:
        module = importlib.import_module(f"{package}.cli")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except CnnzooError as err:
        print(f"cnnzoo {args.command}: error: {err.reason}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"cnnzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cnnzoo list --json | head -1`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
