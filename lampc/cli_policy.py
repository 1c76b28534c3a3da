"""The policy options every compiling subcommand shares (show, generate): one spelling, one validation.

    add_policy_arguments(parser)              --format --criterion --tau --budget --block-k --kinds --sites
                                              --backend --fused
    policy_overrides(args) -> dict            keyword arguments for lampc.compile / CellCompiler
"""

from __future__ import annotations

import argparse

from .cli import budget_arg
from .policy import CRITERIA, SITE_KINDS


def kinds_arg(text: str) -> list[str]:
    """argparse type of --kinds: a comma-separated list of site kinds, or 'all'."""
    kinds = list(SITE_KINDS) if text == "all" else [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SITE_KINDS)} or 'all', "
                                         f"got {text!r}")
    return kinds


def add_policy_arguments(parser, *, format_default: str = "m4") -> None:
    group = parser.add_argument_group("policy")
    group.add_argument("--format", default=format_default,
                       help=f"producer format, e.g. m4, m7, bf16 (default {format_default}; see `lampc formats`)")
    group.add_argument("--criterion", default="strict", choices=CRITERIA, help="look-ahead rule (default strict)")
    group.add_argument("--tau", type=float, default=None, help="the rule's threshold (default: per rule)")
    group.add_argument("--budget", type=budget_arg, default=None,
                       help="for --criterion budget: k per row, or a fraction")
    group.add_argument("--block-k", type=int, default=1, help="accumulation block (1 = round every term, default)")
    group.add_argument("--kinds", default="attention", type=kinds_arg,
                       help="site kinds to rewrite, comma separated: attention,layer_norm,gelu,logits or 'all' "
                            "(default attention, as in the paper)")
    group.add_argument("--sites", choices=("guarded", "all"), default="guarded",
                       help="'all' also lowers every matmul that is no site (default guarded)")
    group.add_argument("--backend", choices=("emulate", "native"), default="emulate",
                       help="emulate the format bit-exactly, or run the real dtype (bf16, fp16)")
    group.add_argument("--fused", action="store_true", help="softmax sites as one fused op (the deployment form)")


def policy_overrides(args) -> dict:
    """lampc.compile keyword arguments from the parsed policy options."""
    return {"format": args.format, "criterion": args.criterion, "tau": args.tau, "budget": args.budget,
            "block_k": args.block_k, "kinds": args.kinds, "sites": args.sites, "backend": args.backend,
            "fused": args.fused}
