"""`lampc eval`: the paper's accuracy protocol over a grid of formats x criteria x tau (docs/METHOD.md §5), with
uniform, random (and oracle) at the same counts and, with --flush-every, the static two-level rule as baselines."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

from ..cli_support import CliError, add_out_argument
from ..cli_policy import add_policy_arguments, compile_arguments
from ..formats import parse as parse_format
from ..formats import valid_names
from ..criteria import COUNT_SOURCES, CRITERIA, DEFAULT_RULE, NO_LOOKAHEAD, SAME_COUNT_BASELINES
from .grid import (POLICY_CELL, SWEEP_CRITERIA, TAU_CRITERIA, TAU_GRIDS,  # no torch: --help is quick
                   check_flush_every, plan_cells)

DEFAULT_CRITERIA = ",".join((NO_LOOKAHEAD, DEFAULT_RULE, *SAME_COUNT_BASELINES))
"""uniform, strict and its baselines at the same counts (random, oracle)."""


def add_parser(subparsers) -> None:
    grids = "; ".join(f"{c} {','.join(f'{t:g}' for t in g)}" for c, g in TAU_GRIDS.items())
    parser = subparsers.add_parser(
        "eval", help="measure accuracy against FP32 over formats x criteria x tau",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run the accuracy protocol of the LAMP paper: for every format x criterion x tau, compile the model "
            "once, run the same token windows as the FP32 reference (TF32 off), and report the mean "
            "KL(P_fp32 || P_test), the flip rate, perplexity, NaN rate and the recompute rate over all batches, "
            "with 95% bootstrap intervals over windows, and each LAMP rule against uniform and random on the same "
            "windows (paired; 'within noise' where the interval holds no change). "
            "Writes results.csv, results.json, kl_vs_rate.png and kl_vs_m.png to --out.", width=100),
        epilog="criteria:\n"
               "  uniform          everything in the low-precision format, no recompute (no tau)\n"
               "  target           paper v1 amplification target, tau in [1, 2]\n"
               "  strict           paper v2 strict threshold, tau > 0\n"
               "  relaxed          paper v2 relaxed threshold, tau in (0, 1]\n"
               "  random, oracle   baselines with the per-row counts of --count-from at the same tau\n"
               "  flush n=N        (--flush-every) uniform, the accumulator added into FP32 every N blocks: the\n"
               "                   static two-level rule, compared on FP32 work (recompute rate for the rules)\n"
               f"\ndefault tau grids: {grids}\n"
               "\nexample:\n"
               "  lampc eval --format m4,m7 --criterion uniform,strict,random --tau 2,0.5 --seq-len 256 --n-seq 16")
    add_data_arguments(parser)
    grid = parser.add_argument_group("grid")
    grid.add_argument("--format", default="m4,m7", metavar="LIST",
                      help="comma-separated accumulator formats (default m4,m7; see `lampc formats`)")
    grid.add_argument("--criterion", default=DEFAULT_CRITERIA, metavar="LIST", type=str.lower,
                      help=f"comma-separated criteria from {','.join(SWEEP_CRITERIA)} (default {DEFAULT_CRITERIA})")
    grid.add_argument("--tau", action="append", default=None, metavar="[CRITERION=]LIST",
                      help="comma-separated thresholds for every criterion that takes one, or, prefixed with "
                           "CRITERION=, for that criterion only (repeat the option; default: a grid per criterion, "
                           "below)")
    grid.add_argument("--count-from", default=DEFAULT_RULE, metavar="LIST", type=str.lower,
                      help=f"the rule(s) from {','.join(COUNT_SOURCES)} whose per-row counts random and oracle "
                           f"reproduce, one series each (default {DEFAULT_RULE})")
    grid.add_argument("--block-k", type=positive_int, default=1, metavar="B",
                      help="accumulation block: 1 = round after every multiply-add (default), B = FP32 partial "
                           "sums of B terms")
    add_policy_arguments(parser, grid=True)
    grid.add_argument("--flush-every", type=flush_every_arg, default=None, metavar="LIST",
                      help="the static two-level baselines (vLLM's and FlashAttention-3's FP8 attention): for each "
                           "comma-separated n, a cell per format that recomputes nothing and adds the low-precision "
                           "accumulator into FP32 every n blocks, reported as 'flush n=N' with its FP32 work "
                           "(e.g. 1,4,16,64; default none). Every cell flushed: a --policy file with flush_every")
    parser.add_argument("--generate", default=None, metavar="N,M", type=generate_arg,
                        help="also decode N prompts (of --seq-len tokens) greedily for M new tokens in every cell "
                             "and compare with FP32's continuations: mean tokens before the first divergence, share "
                             "identical, recompute rate of prefill and of decode steps")
    add_out_argument(parser, default="lampc-eval", metavar="DIR", help="output directory (default ./lampc-eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, third-party warnings or logs")
    parser.set_defaults(run=run)


def add_data_arguments(parser, *, seq_len: int = 128, n_seq: int = 4, batch_size: int = 4) -> None:
    """--model, --text, --shuffle, --seq-len, --n-seq, --batch-size, --seed (shared with `lampc demo`)."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", default="embedded", metavar="NAME|DIR",
                      help="'embedded' (default, lampc's small GPT-2) or a local Hugging Face model directory")
    data.add_argument("--text", default=None, metavar="FILE",
                      help="UTF-8 text to evaluate on (default: Jane Austen's Persuasion, held out from training)")
    data.add_argument("--shuffle", action="store_true",
                      help="permute the tokens of every window (the paper's nonsense-input stress case)")
    data.add_argument("--seq-len", type=positive_int, default=seq_len, metavar="T",
                      help=f"tokens per window (default {seq_len}; at most the model's context)")
    data.add_argument("--n-seq", type=positive_int, default=n_seq, metavar="N",
                      help=f"number of windows (default {n_seq})")
    data.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="B",
                      help=f"windows per forward pass (default {batch_size})")
    data.add_argument("--seed", type=int, default=42, help="seed for choosing (and shuffling) windows (default 42)")


def generate_arg(text: str) -> tuple[int, int]:
    """argparse type of --generate: N,M (prompts, new tokens), both positive."""
    parts = text.split(",")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (prompts, new tokens), got {text!r}") from None
    if n < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"N and M must be positive, got {text!r}")
    return n, m


def flush_every_arg(text: str) -> tuple[int, ...]:
    """argparse type of --flush-every: comma-separated integers n >= 1, repeats dropped."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers n >= 1, got {text!r}")
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers n >= 1 (flush into FP32 every n blocks), got "
                                         f"{text!r}") from None
    try:
        return tuple(check_flush_every(values))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run(args) -> int:
    flushes = args.flush_every or ()  # eval's own --flush-every: baseline cells, not a field of every cell's policy
    policy, fixed = compile_arguments(args, grid=True)
    if policy is not None and policy.per_site:
        formats, criteria, taus, count_from = per_site_grid(args, policy)
    else:
        formats, criteria = parse_formats(args.format), parse_criteria(args.criterion)
        taus, count_from = parse_taus(args.tau), parse_count_from(args.count_from)
    cells = check_grid(formats, criteria, taus, count_from, flushes)
    if any(c in CRITERIA and CRITERIA[c].takes_budget for c in criteria) and args.budget is None:
        raise CliError("--criterion budget needs --budget (k entries per row, or a fraction)")
    check_data_arguments(args)
    model, tokenizer = load(args.model)
    check_context(model, args)

    from .caveats import sweep_notes
    from .report_table import (COMPARISON_COLUMNS, EVAL_COLUMNS, GENERATION_COLUMNS, comparisons, eval_columns,
                               format_table, headline, headline_columns, interval_line)
    from .sweep import run_sweep

    print(f"lampc eval: {len(cells)} cells on {args.model}, {args.n_seq} x {args.seq_len} tokens of "
          f"{args.text or 'Persuasion'}{' (shuffled)' if args.shuffle else ''}", file=sys.stderr)
    rows = run_sweep(model, tokenizer, formats=formats, criteria=criteria, taus=taus, seq_len=args.seq_len,
                     n_seq=args.n_seq, seed=args.seed, text=args.text, shuffle=args.shuffle,
                     batch_size=args.batch_size, block_k=args.block_k, count_from=count_from, out_dir=args.out,
                     progress=not args.quiet, model_name=args.model, command=command_line(args),
                     generate=args.generate, policy=policy, fixed=fixed, flush_every=flushes)
    print(interval_line(rows))
    print(format_table(rows, eval_columns(rows, EVAL_COLUMNS + (GENERATION_COLUMNS if args.generate else ()))))
    best = headline(rows)
    if best:
        flush = " and the best flush within the same FP32 work" if flushes else ""
        print(f"\nbest deployable rule at a recompute rate cap, against uniform and random at the same counts{flush}:")
        print(format_table(best, headline_columns(rows)))
    pairs = comparisons(rows)
    if pairs:
        print("\neach LAMP row against its baselines on the same windows (KL reduction = KL(baseline) / KL(rule), "
              "paired bootstrap CI; flips: McNemar's exact test):")
        print(format_table(pairs, COMPARISON_COLUMNS))
    for note in sweep_notes(rows):
        print("\n" + textwrap.fill(note, width=110, subsequent_indent="  "))
    print(f"\nwrote {describe_outputs(args.out)}")
    return 0


def per_site_grid(args, policy) -> tuple[list[str], list[str], None, str]:
    """The grid of a policy with per-site rules (lampc calibrate's file): uniform low precision and the policy as
    written, in the policy's format. A grid of criteria or taus would override its per-site taus: refused."""
    given = [flag for flag, value, default in (("--format", args.format, "m4,m7"),
                                               ("--criterion", args.criterion, DEFAULT_CRITERIA),
                                               ("--tau", args.tau, None),
                                               ("--count-from", args.count_from, DEFAULT_RULE),
                                               ("--block-k", args.block_k, 1)) if value != default]
    if given:
        raise CliError(f"{', '.join(given)}: the --policy file sets one rule per site (per_site), which a grid "
                       "would override; lampc eval runs it as written, beside uniform (drop these options, or use "
                       "a policy file without per_site)")
    site = getattr(policy, policy.enabled_kinds()[0])
    return [site.format.name], [NO_LOOKAHEAD, POLICY_CELL], None, DEFAULT_RULE


# ---- argument checks (each error names its argument) ---------------------------------------------------------


def split_list(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise CliError(f"{name}: expected a comma-separated list without empty items, got {text!r}")
    return items


def parse_formats(text: str) -> list[str]:
    names = []
    for item in split_list(text, "--format"):
        try:
            names.append(parse_format(item).name)
        except ValueError:
            raise CliError(f"--format: unknown format {item!r}; valid: {', '.join(valid_names())}") from None
    return list(dict.fromkeys(names))


def parse_criteria(text: str) -> list[str]:
    items = split_list(text, "--criterion")
    for item in items:
        if item not in SWEEP_CRITERIA:
            raise CliError(f"--criterion: unknown criterion {item!r}; choose from {', '.join(SWEEP_CRITERIA)}")
    return list(dict.fromkeys(items))


def parse_taus(values: list[str] | str | None) -> list[float] | dict[str, list[float]] | None:
    """--tau values: 'LIST' (every criterion) or 'CRITERION=LIST'; a list when only plain lists are given."""
    if values is None:
        return None
    values = [values] if isinstance(values, str) else values
    taus: dict[str, list[float]] = {}
    for value in values:
        criterion, sep, text = value.rpartition("=")
        key = criterion.strip().lower() if sep else "all"  # criteria take any case, as --criterion does
        if sep and key not in TAU_CRITERIA:
            raise CliError(f"--tau: {key!r} in {value!r} is not a criterion that takes a tau "
                           f"({', '.join(TAU_CRITERIA)})")
        for item in split_list(text, "--tau"):
            try:
                taus.setdefault(key, []).append(float(item))
            except ValueError:
                raise CliError(f"--tau: {item!r} is not a number") from None
    return taus["all"] if list(taus) == ["all"] else taus


def parse_count_from(text: str) -> list[str]:
    items = split_list(text, "--count-from")
    for item in items:
        if item not in COUNT_SOURCES:
            raise CliError(f"--count-from: {item!r} is not a rule random/oracle can count from; choose from "
                           f"{', '.join(COUNT_SOURCES)}")
    return list(dict.fromkeys(items))


def check_grid(formats, criteria, taus, count_from, flush_every=()):
    """The sweep's cells; a tau outside a criterion's range is reported against --tau."""
    if taus is not None and all(c not in TAU_CRITERIA for c in criteria):
        raise CliError("--tau: no selected criterion takes a tau (uniform recomputes nothing, budget takes --budget)")
    try:
        return plan_cells(formats, criteria, taus, count_from, flush_every)
    except ValueError as err:
        raise CliError(f"--tau: {err}") from None


def check_data_arguments(args) -> None:
    """The checks that need no model: --text exists, --out can be a directory."""
    if args.text is not None and not Path(args.text).is_file():
        raise CliError(f"--text: no such file: {args.text}")
    if args.text is not None:
        from .data import DataError, read_text

        try:
            read_text(args.text)  # unreadable text fails here, before the model loads
        except DataError as err:
            raise CliError(f"--text: {err}") from None
    check_writable_dir(Path(args.out), "--out")


def check_writable_dir(out: Path, flag: str) -> None:
    """`out` exists or can be made, and a file can be written in it: checked before any work, not after it."""
    if out.exists() and not out.is_dir():
        raise CliError(f"{flag}: {out} exists and is not a directory")
    missing = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".lampc-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CliError(f"{flag}: cannot write in {out} ({err.strerror or err})") from None
    finally:
        for made in missing:  # leave no directory behind: the run makes it again when it writes
            if made.is_dir():
                made.rmdir()


def check_context(model, args) -> None:
    """--seq-len against the loaded model's context (n_positions / max_position_embeddings)."""
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context and not 2 <= args.seq_len <= context:
        raise CliError(f"--seq-len: {args.seq_len} is outside [2, {context}], the context of model {args.model!r}")


def load(name: str):
    from ..models import ModelNotFoundError, load_model

    try:
        return load_model(name)
    except ModelNotFoundError as err:
        raise CliError(f"--model: {_model_help(name, err)}") from None


def _model_help(name: str, err: Exception) -> str:
    if name == "embedded":
        return (f"the embedded model's weights are not there yet ({err}). It is trained by "
                "`python scripts/train_embedded.py` in a clone of lampc; or pass --model DIR with a local Hugging "
                "Face model")
    return str(err)


def command_line(args, name: str = "eval") -> str:
    """The full command, every option spelled out (defaults included), so that results.json can be rerun; a
    repeated option (a list) once per value, one of values (a tuple: --generate, --flush-every) comma-separated."""
    parts = ["lampc", name]
    for key, value in vars(args).items():
        if key in ("command", "run") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            for item in value if isinstance(value, list) else [value]:  # --tau may be repeated
                parts += [flag, str(item)]
    return " ".join(shlex.quote(p) for p in parts)


def describe_outputs(out: str) -> str:
    out_dir = Path(out)
    names = [p.name for p in sorted(out_dir.glob("results.*")) + sorted(out_dir.glob("*.png"))]
    return f"{', '.join(names)} in {out_dir.resolve()}"
