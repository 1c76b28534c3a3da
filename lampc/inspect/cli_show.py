"""`lampc show`: compile a model and print its rewritten graph, grouped by site (or, with --onnx, an exported file)."""

from __future__ import annotations

from ..cli_support import CliError, add_model_argument
from ..cli_policy import DEFAULTS, add_policy_arguments, compile_arguments

COMPILE_OPTIONS = ("model", *DEFAULTS, "policy", "decode", "full", "graph")
"""The options that pick or print a compilation: `--onnx FILE` prints the file as it was exported, so none applies."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "show", help="compile a model and print the rewritten graph",
        description="Compile a model with lampc and print the rewritten graph grouped by site (values with dtype, "
                    "shape and module path), the skipped candidates with their reasons, and the recompute rate of "
                    "one forward pass on a short text.")
    add_model_argument(parser)
    add_policy_arguments(parser)
    parser.add_argument("--decode", action="store_true",
                        help="also show the decode-step graph (one new token against the KV cache), after a short "
                             "generation")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, third-party warnings or logs")
    parser.add_argument("--full", action="store_true", help="list the whole graph, not just the sites")
    parser.add_argument("--graph", metavar="FILE", help="also write the rewritten graph as .graphml or .dot")
    parser.add_argument("--onnx", metavar="FILE",
                        help="instead: print an exported ONNX model compactly (as exported: no model or policy "
                             "option applies)")
    parser.set_defaults(run=run, model=None)  # None: not given (the embedded model), so --onnx can refuse it


def run(args) -> int:
    if args.onnx:
        return show_onnx(args)
    import torch

    from ..api import compile
    from ..eval.cli_eval import load
    from ..eval.progress import step_line
    from .show import show

    model_name = args.model or "embedded"
    model, tokenizer = load(model_name)
    policy, overrides = compile_arguments(args)
    step_line(f"compiling {model_name} (torch.export capture, then the LAMP passes)", not args.quiet)
    compiled = compile(model, policy, **overrides)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        compiled(ids)
        if args.decode:
            compiled.generate(ids, max_new_tokens=4)
    show(compiled, full=args.full, phase="decode" if args.decode else None)
    if args.graph:
        compiled.write_graph(args.graph)
        print(f"graph written to {args.graph}")
    return 0


def show_onnx(args) -> int:
    """`show --onnx FILE`: the exported model, compactly; an option that would change a compilation is refused."""
    given = [f"--{name.replace('_', '-')}" for name in COMPILE_OPTIONS if _given(getattr(args, name, None))]
    if given:
        raise CliError(f"{', '.join(given)}: --onnx prints the ONNX file as it was exported, which no model or policy "
                       "option changes (compile and export again with them: lampc export)")
    from ..export.describe import describe_onnx

    print(describe_onnx(args.onnx))
    return 0


def _given(value) -> bool:
    """An option was set: by identity, so 0 and 0.0 (`--tau 0`, `--block-k 0`) count as given."""
    return value is not None and value is not False
