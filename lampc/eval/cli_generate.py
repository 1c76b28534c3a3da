"""`lampc generate`: continue prompts with a LAMP-compiled model, optionally beside FP32 and other policies.

    lampc generate --prompt "It is a truth universally acknowledged" --max-new-tokens 24 --compare fp32,uniform

prints, per prompt, the continuation of each variant; with --compare, the first token where a variant leaves the
first variant's continuation is marked with `[[...]]` and its position given. --json writes everything (tokens,
text, divergence, recompute rates of prefill and decode) to a file ('-' for standard output).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..cli_support import CliError, add_model_argument, check_writable_file
from ..cli_policy import add_policy_arguments, compile_arguments

COMPARE_VARIANTS = ("fp32", "uniform")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text with a LAMP-compiled model (KV cache), beside FP32 if asked",
        description="Compile a model with the policy options, then continue each prompt with greedy decoding (or "
                    "sampling) through the compiled prefill and decode graphs. --compare adds the FP32 model "
                    "and/or uniform low precision (the same format, no recompute) and marks where each leaves the "
                    "first continuation.")
    add_model_argument(parser)
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeat the option for several)")
    parser.add_argument("--prompts-file", default=None, metavar="FILE", help="one prompt per non-empty line")
    parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="new tokens per prompt (32)")
    parser.add_argument("--compare", default=None, metavar="LIST",
                        help="comma-separated variants to run beside LAMP: fp32 (the uncompiled model), uniform")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of mass >= p")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, third-party warnings or logs")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON ('-': stdout)")
    add_policy_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    prompts = read_prompts(args)
    variants = parse_compare(args.compare)
    if args.max_new_tokens < 0:
        raise CliError(f"--max-new-tokens: must be >= 0, got {args.max_new_tokens}")
    if args.json not in (None, "-"):
        check_writable_file(args.json, "--json")  # before the work, not after it
    from .cli_eval import load
    from .generation import compare_generations
    from .progress import step_line

    model, tokenizer = load(args.model)
    policy, overrides = compile_arguments(args)
    step_line(f"compiling {args.model} with its cached steps (prefill, decode: one capture each) and generating",
              not args.quiet)
    result = compare_generations(model, tokenizer, prompts, overrides, policy=policy, variants=variants,
                                 max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    result["model"] = args.model
    if args.json == "-":
        print(json.dumps(result, indent=1))
    else:
        print(render(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
            print(f"\nwrote {args.json}")
    return 0


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise CliError(f"--prompts-file: no such file: {path}")
        try:
            prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise CliError(f"--prompts-file: {path} is not UTF-8 text") from None
    if not prompts:
        raise CliError("give at least one --prompt or a --prompts-file")
    if any(not p.strip() for p in prompts):
        raise CliError("--prompt: empty prompt")
    return prompts


def parse_compare(text: str | None) -> list[str]:
    if text is None:
        return []
    items = [t.strip().lower() for t in text.split(",")]
    bad = [t for t in items if t not in COMPARE_VARIANTS]
    if bad or not items:
        raise CliError(f"--compare: expected a comma-separated list of {', '.join(COMPARE_VARIANTS)}, got {text!r}")
    return list(dict.fromkeys(items))


def render(result: dict) -> str:
    lines = [f"lampc generate: {result['model']}, {result['policy']}"]
    for item in result["prompts"]:
        lines.append("")
        lines.append(f"prompt: {item['prompt']}")
        width = max(len(v["variant"]) for v in item["variants"])
        for v in item["variants"]:
            where = "" if v["diverges_at"] is None else f"   (leaves {item['variants'][0]['variant']} at new token " \
                                                         f"{v['diverges_at']})"
            lines.append(f"  {v['variant']:<{width}} | {v['marked']}{where}")
    rates = result.get("recompute_rate")
    if rates:
        lines.append("")
        lines.append(f"recompute rate (LAMP): prefill {100 * rates['prefill']:.2f}%, "
                     f"decode {100 * rates['decode']:.2f}%")
    lines += [f"\n{note}" for note in result.get("notes", [])]  # short rows: why the rates are high
    return "\n".join(lines)


