"""The graph listings of docs/DESIGN.md, generated: `python docs/listings.py` rewrites them, `--check` exits 1 if
DESIGN.md differs from what the code produces now (tests/test_docs_listings.py runs it in CI).

Each listing is one module of a seeded tiny GPT-2 (`attn_implementation="sdpa"`, so stage 2 has an SDPA to
expand) at one stage of `lampc.compile`, printed by `lampc.inspect.show.format_node` (dtype, symbolic shape;
a site's configuration parts as the texts its ops receive: 'emulate m4', 'strict tau=0.1'). A block in DESIGN.md is the text between `<!-- listing: NAME -->` and
`<!-- /listing -->`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DESIGN = Path(__file__).parent / "DESIGN.md"
BLOCK = re.compile(r"(<!-- listing: (?P<name>[\w-]+) -->\n```\n)(?P<body>.*?)(```\n<!-- /listing -->)", re.S)


def _model():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=97, n_positions=64, bos_token_id=0,
                        eos_token_id=0, attn_implementation="sdpa")
    return GPT2LMHeadModel(config).eval()


def _module_listing(gm, module: str, *, submodules: bool = False) -> str:
    """The calls of `module` (with submodules: of everything under it) in graph order."""
    from lampc.graph_view import module_path
    from lampc.inspect.show import format_node

    lines = []
    for node in gm.graph.nodes:
        path = module_path(node)
        inside = path.startswith(module) if submodules else path == module
        if node.op not in ("call_function", "call_module") or not inside:
            continue
        lines.append(f"{format_node(node)}    # {module_path(node)}")
    return "\n".join(lines) + "\n"


def listings() -> dict[str, str]:
    """Every listing of DESIGN.md, by block name."""
    import dataclasses

    from lampc.capture import capture, copy_sharing_weights
    from lampc.passes import attention_sites, expand_sdpa, linear_sites, rewrite_sites, site_kinds
    from lampc.policy import Policy, SitePolicy

    captured = capture(_model())
    policy = SitePolicy(format="m4", criterion="strict", tau=0.1)

    def fresh():
        return copy_sharing_weights(captured.graph_module)

    out = {"captured": _module_listing(fresh(), "transformer.h.0.attn")}
    gm = fresh()
    expand_sdpa(gm)
    out["expand-sdpa"] = _module_listing(gm, "transformer.h.0.attn")
    rewrite_sites(gm, [attention_sites(policy)])
    out["attention"] = _module_listing(gm, "transformer.h.0.attn")
    linear = fresh()
    expand_sdpa(linear)
    rewrite_sites(linear, [attention_sites(policy), linear_sites({"layer_norm": policy, "gelu": policy})])
    out["linear"] = _module_listing(linear, "transformer.h.0.mlp", submodules=True)
    lowered = fresh()
    expand_sdpa(lowered)
    rewrite_sites(lowered, site_kinds(Policy(attention=policy, sites="all")))
    out["lowered"] = _module_listing(lowered, "transformer.h.0.attn", submodules=True)
    fused = fresh()
    expand_sdpa(fused)
    rewrite_sites(fused, [attention_sites(dataclasses.replace(policy, fused=True))])
    out["fused"] = _module_listing(fused, "transformer.h.0.attn")
    streamed = fresh()
    expand_sdpa(streamed)
    rewrite_sites(streamed, [attention_sites(dataclasses.replace(policy, streaming=True, granularity="tile",
                                                                 tile=(16, 16)))])
    out["streaming"] = _module_listing(streamed, "transformer.h.0.attn")
    from lampc.capture_step import StepCapture  # the cached steps are captured apart from the full graph

    decode = StepCapture(_model(), captured.max_len).graph("decode")  # the same seeded model's decode step
    expand_sdpa(decode)
    rewrite_sites(decode, [attention_sites(policy)])
    out["decode"] = _module_listing(decode, "transformer.h.0.attn")
    return out


def render(text: str, generated: dict[str, str]) -> str:
    """DESIGN.md's text with every listing block replaced by its generated body."""
    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in generated:
            raise KeyError(f"DESIGN.md has a listing block {name!r} that docs/listings.py does not generate")
        return match.group(1) + generated[name] + match.group(4)

    return BLOCK.sub(body, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if DESIGN.md's listings are out of date")
    args = parser.parse_args(argv)
    text = DESIGN.read_text(encoding="utf-8")
    new = render(text, listings())
    if args.check:
        if new != text:
            print("docs/DESIGN.md: listings are out of date; run python docs/listings.py", file=sys.stderr)
            return 1
        return 0
    DESIGN.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
