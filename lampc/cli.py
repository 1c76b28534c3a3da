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
`run(args) -> int`; what they share (errors, --model, --quiet) is in lampc/cli_support.py, so no subcommand
imports this module. Errors in arguments exit with status 2 and a one-line message naming the argument.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .cli_support import CliError, silence_third_party

SUBCOMMANDS = {
    "formats": "lampc.inspect.cli_formats",
    "show": "lampc.inspect.cli_show",
    "demo": "lampc.eval.cli_demo",
    "eval": "lampc.eval.cli_eval",
    "calibrate": "lampc.eval.cli_calibrate",
    "export": "lampc.export.cli_export",
    "generate": "lampc.eval.cli_generate",
    "tasks": "lampc.tasks.cli_tasks",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lampc",
        description="Look-ahead mixed-precision (LAMP) inference for transformers: compile, inspect, measure, export.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("lampc"):
                continue  # a subcommand not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        silence_third_party()
    try:
        return int(args.run(args) or 0)
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
