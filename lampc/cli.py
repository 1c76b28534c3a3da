"""The `lampc` command.

    lampc formats                      the number formats lampc models
    lampc show [--model embedded]      compile a model and print its rewritten graph, grouped by site
    lampc demo                         the main job: the accuracy protocol on the embedded model, compact table
    lampc eval ...                     the paper's accuracy protocol, a grid of formats x criteria x tau
    lampc export ...                   export a compiled model to ONNX
    lampc generate --prompt TEXT ...   continue prompts with a compiled model (KV cache), beside FP32 if asked

Each subcommand lives beside the code it drives and registers itself through `add_parser(subparsers)` and
`run(args) -> int`. Errors in arguments exit with status 2 and a one-line message naming the argument.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "formats": "lampc.inspect.cli_formats",
    "show": "lampc.inspect.cli_show",
    "demo": "lampc.eval.cli_demo",
    "eval": "lampc.eval.cli_eval",
    "export": "lampc.export.cli_export",
    "generate": "lampc.eval.cli_generate",
}


class CliError(Exception):
    """A user error on the command line: printed as `lampc: error: ...`, exit status 2."""


def budget_arg(text: str):
    """argparse type of --budget: an int k per row or a fraction (SitePolicy.budget)."""
    from .policy import parse_budget

    try:
        return parse_budget(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int k or a fraction, got {text!r}") from None


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
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        parser.exit(2, f"lampc {args.command}: error: {err}\n")
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"lampc {args.command}: error: {err}\n")


if __name__ == "__main__":  # `python -m lampc.cli`: run the package's module, so CliError is the same class
    from lampc.cli import main as package_main

    sys.exit(package_main())
