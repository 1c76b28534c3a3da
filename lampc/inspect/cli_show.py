"""`lampc show`: compile a model and print its rewritten graph, grouped by site."""

from __future__ import annotations

from ..cli_support import add_model_argument
from ..cli_policy import add_policy_arguments, compile_arguments


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
    parser.add_argument("--quiet", action="store_true", help="no third-party progress bars or warnings")
    parser.add_argument("--full", action="store_true", help="list the whole graph, not just the sites")
    parser.add_argument("--graph", metavar="FILE", help="also write the rewritten graph as .graphml or .dot")
    parser.add_argument("--onnx", metavar="FILE", help="instead: print an exported ONNX model compactly")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.onnx:
        from ..export.describe import describe_onnx

        print(describe_onnx(args.onnx))
        return 0
    import torch

    from ..api import compile
    from ..eval.cli_eval import load
    from .show import show

    model, tokenizer = load(args.model)
    policy, overrides = compile_arguments(args)
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
