"""The `cnnzoo` console script.

It only mounts the subcommands that each package owns (`cnnzoo.zoo.cli`, `cnnzoo.serving.cli`,
`cnnzoo.interpret.cli`); a package's `register(subparsers)` adds its commands and binds each to a
handler with `set_defaults(func=...)`. Handlers import torch, onnxruntime and grpc themselves,
so `cnnzoo --help` stays fast.

Errors the project raises on purpose (`cnnzoo.errors.CnnzooError`) become one line on stderr and
a non-zero exit code (`cnnzoo.errors.EXIT_CODES`, listed by `cnnzoo --help`); anything else
propagates so that bugs stay visible. `--log-level` (or `CNNZOO_LOG_LEVEL`) works before or after
any command; a command's default is WARNING, or what it sets as `default_log_level` (`serve`:
INFO).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from cnnzoo import __version__
from cnnzoo.errors import EXIT_CODES, CnnzooError, NotFound

# Packages whose `cli.register` contributes subcommands, in help order.
_COMMAND_PACKAGES = ("cnnzoo.zoo", "cnnzoo.serving", "cnnzoo.interpret")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_ENV = "CNNZOO_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOG_HELP = f"log level: {', '.join(LOG_LEVELS)} (default: ${LOG_ENV}, else the command's own)"


# What `pip install 'cnnzoo[torch]'` adds: training, export, jobs and the PyTorch reference.
TORCH_EXTRA = ("torch", "torchvision", "captum", "onnxscript")


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnzoo",
        description="Train, serve and understand convolutional image classifiers.",
        epilog=_exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help=_LOG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for package in _COMMAND_PACKAGES:
        module = importlib.import_module(f"{package}.cli")
        module.register(sub)
    _extend_commands(sub)
    for command in sub.choices.values():  # after the command too: `cnnzoo serve --log-level X`
        command.add_argument(
            "--log-level",
            type=str.upper,
            choices=LOG_LEVELS,
            default=argparse.SUPPRESS,
            help=_LOG_HELP,
        )
    return parser


def _extend_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands one package extends for another, wired here because the packages may not
    import each other: `cnnzoo export` (zoo) also writes the explanation models (interpret;
    `zoo` never imports `interpret`)."""
    from cnnzoo.interpret.graph_export.cli import extend_export

    extend_export(sub.choices["export"])


def _log_level(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.log_level:
        return str(args.log_level)
    from_env = os.environ.get(LOG_ENV, "").strip().upper()
    if from_env:
        if from_env not in LOG_LEVELS:
            parser.error(f"{LOG_ENV}={from_env!r} is not one of {', '.join(LOG_LEVELS)}")
        return from_env
    return getattr(args, "default_log_level", "WARNING")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=_log_level(parser, args), format=LOG_FORMAT)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except CnnzooError as err:
        print(f"cnnzoo {args.command}: error: {err.reason}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TORCH_EXTRA:
            raise
        print(
            f"cnnzoo {args.command}: error: this command needs PyTorch, and {err.name} is not "
            "installed: pip install 'cnnzoo[torch]' (serving, classifying, explaining over a "
            "server and explain-export work without it)",
            file=sys.stderr,
        )
        return NotFound.exit_code
    except KeyboardInterrupt:
        print(f"cnnzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cnnzoo list --json | head -1`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
