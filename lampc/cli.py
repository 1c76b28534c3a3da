"""The `lampc` command.

    lampc formats                      the number formats lampc models
    lampc show [--model embedded]      compile a model and print its rewritten graph, grouped by site
    lampc demo                         the main job: the accuracy protocol on the embedded model, compact table
    lampc eval ...                     the paper's accuracy protocol, a grid of formats x criteria x tau
    lampc calibrate --rate R ...       one tau per site for a target recompute rate (or --kl), as a policy file
    lampc export ...                   export a compiled model to ONNX
    lampc generate --prompt TEXT ...   continue prompts with a compiled model (KV cache), beside FP32 if asked
    lampc tasks --tasks LIST ...       lm-eval tasks on a LAMP model, paired with FP32 (flips, McNemar, KL)

Each subcommand lives beside the code it drives and registers itself through `add_parser(subparsers)` and
`run(args) -> int`; what they share (errors, --model, --out, what third-party output shows) is in
lampc/cli_support.py, so no subcommand imports this module. Errors in arguments exit with status 2 and a one-line
message naming the argument.

Only the subcommand being run is imported (the others are listed from SUBCOMMANDS), and a subcommand's module
imports torch, transformers, lm-eval or ONNX only inside `run`: `lampc --help`, `lampc eval --help` and a bad
argument cost a fraction of a second. Every subcommand takes --verbose (third-party progress bars, logs and
warnings, hidden by default; lampc/cli_support.py's third_party_output).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .cli_support import CliError, third_party_output

SUBCOMMANDS = {
    "formats": ("lampc.inspect.cli_formats", "list the number formats lampc models"),
    "show": ("lampc.inspect.cli_show", "compile a model and print the rewritten graph"),
    "demo": ("lampc.eval.cli_demo", "LAMP vs uniform, random and oracle on the embedded model (about a minute)"),
    "eval": ("lampc.eval.cli_eval", "measure accuracy against FP32 over formats x criteria x tau"),
    "calibrate": ("lampc.eval.cli_calibrate",
                  "one tau per site for a target recompute rate or KL; writes a policy file"),
    "export": ("lampc.export.cli_export",
               "export a compiled model to ONNX (standard ops, runs in stock ONNX Runtime)"),
    "generate": ("lampc.eval.cli_generate",
                 "generate text with a LAMP-compiled model (KV cache), beside FP32 if asked"),
    "tasks": ("lampc.cli_tasks", "lm-eval tasks on a LAMP model, paired with FP32"),
}
"""name -> (module, the help line `lampc --help` shows without importing it: the one the module registers)."""


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The `lampc` parser, with the full parsers of `commands` (default: all), whose modules alone are imported;
    the others are listed with their help line."""
    parser = argparse.ArgumentParser(
        prog="lampc",
        description="Look-ahead mixed-precision (LAMP) inference for transformers: compile, inspect, measure, export.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        if commands is not None and name not in commands:
            subparsers.add_parser(name, help=help_line, add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("lampc"):
                continue  # a subcommand not built yet
            raise
        module.add_parser(subparsers)
        subparsers.choices[name].add_argument(
            "--verbose", action="store_true",
            help="show third-party progress bars, logs and warnings (hidden by default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in SUBCOMMANDS else [])
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        parser.exit(2, f"lampc {args.command}: error: --quiet and --verbose exclude each other\n")
    with third_party_output(verbose=verbose, quiet=quiet):
        try:
            return int(args.run(args) or 0)
        except BrokenPipeError:  # `lampc show | head`: the reader left; stop quietly, as other commands do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            return 141  # 128 + SIGPIPE, what a shell reports for a command killed by the pipe
        except (CliError, ValueError, TypeError, FileNotFoundError, LookupError) as err:
            parser.exit(2, f"lampc {args.command}: error: {err}\n")
        except (RuntimeError, ModuleNotFoundError) as err:
            if not isinstance(err, user_errors()):
                raise  # a bug: keep the traceback
            parser.exit(2, f"lampc {args.command}: error: {err}\n")


def user_errors() -> tuple[type, ...]:
    """lampc's error classes that describe bad input (a model that cannot be captured, unreadable data, a missing
    optional package): one line and exit 2 on the command line, not a traceback."""
    from .capture import CaptureError
    from .eval.data import DataError
    from .models.smollm2 import SmolLM2NotInstalledError

    found = [CaptureError, DataError, SmolLM2NotInstalledError]
    try:
        from .export.onnx import OnnxExportError

        found.append(OnnxExportError)
    except ImportError:
        pass
    return tuple(found)


if __name__ == "__main__":  # `python -m lampc.cli`: run the package's module, so CliError is the same class
    from lampc.cli import main as package_main

    sys.exit(package_main())
