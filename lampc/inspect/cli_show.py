"""`lampc show`: compile a model and print its rewritten graph, grouped by site."""

from __future__ import annotations

import argparse

from ..cli import budget_arg
from ..policy import CRITERIA, SITE_KINDS


def _kinds(text: str) -> list[str]:
    kinds = list(SITE_KINDS) if text == "all" else [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SITE_KINDS)} or 'all', got {text!r}")
    return kinds


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "show", help="compile a model and print the rewritten graph",
        description="Compile a model with lampc and print the rewritten graph grouped by site (values with dtype, "
                    "shape and module path), the skipped candidates with their reasons, and the recompute rate of "
                    "one forward pass on a short text.")
    parser.add_argument("--model", default="embedded", help="'embedded' (default), a known name, or a model directory")
    parser.add_argument("--format", default="m4", help="producer format, e.g. m4, m7, bf16 (default m4)")
    parser.add_argument("--criterion", default="strict", choices=CRITERIA, help="look-ahead rule (default strict)")
    parser.add_argument("--tau", type=float, default=None, help="the rule's threshold (default: per rule)")
    parser.add_argument("--budget", type=budget_arg, default=None, help="for --criterion budget: k per row, or a fraction")
    parser.add_argument("--kinds", default="attention", type=_kinds,
                        help="site kinds to rewrite, comma separated: attention,layer_norm,gelu,logits or 'all' "
                             "(default attention, as in the paper)")
    parser.add_argument("--sites", choices=("guarded", "all"), default="guarded",
                        help="'all' also lowers every matmul that is no site (default guarded)")
    parser.add_argument("--backend", choices=("emulate", "native"), default="emulate",
                        help="emulate the format bit-exactly, or run the real dtype (bf16, fp16)")
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
    from ..models import load_model
    from .show import show

    model, tokenizer = load_model(args.model)
    compiled = compile(model, format=args.format, criterion=args.criterion, tau=args.tau, budget=args.budget,
                       kinds=args.kinds, sites=args.sites, backend=args.backend)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        compiled(ids)
    show(compiled, full=args.full)
    if args.graph:
        compiled.write_graph(args.graph)
        print(f"graph written to {args.graph}")
    return 0
