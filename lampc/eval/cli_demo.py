"""`lampc demo`: LAMP's headline in a minute or two, on the embedded model and Persuasion.

Per format: uniform low precision; the strict rule over a short tau grid, of which the setting with the lowest KL at
a recompute rate <= --max-rate is picked; then random and oracle recomputation with exactly that setting's per-row
counts (so the same rate). The reference, the windows and the capture are shared by all of it.
"""

from __future__ import annotations

import sys
import time

from ..cli_support import CliError, add_out_argument
from ..criteria import DEFAULT_RULE, NO_LOOKAHEAD, SAME_COUNT_BASELINES
from .cli_eval import (
    add_data_arguments,
    check_context,
    check_data_arguments,
    command_line,
    describe_outputs,
    load,
    parse_formats,
    parse_taus,
)
from .grid import TAU_GRIDS, Cell, plan_cells

RULE = DEFAULT_RULE
"""The rule the demo sweeps (strict); its baselines are uniform and, at its counts, random and oracle."""
DEMO_TAUS = TAU_GRIDS[RULE]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="LAMP vs uniform, random and oracle on the embedded model (about a minute)",
        description="Measure LAMP's accuracy gain on the embedded GPT-2 and Jane Austen's Persuasion: for each "
                    "format, uniform low precision (no recompute), the best strict-rule setting at a recompute rate "
                    "<= --max-rate, and random and oracle recomputation at exactly that setting's counts. Prints a "
                    "table and writes results.csv, results.json and the plots to --out.")
    add_data_arguments(parser)
    parser.add_argument("--format", default="m4,m7", metavar="LIST", help="comma-separated formats (default m4,m7)")
    parser.add_argument("--tau", default=None, metavar="LIST",
                        help=f"strict-rule thresholds to try (default {','.join(f'{t:g}' for t in DEMO_TAUS)})")
    parser.add_argument("--max-rate", type=float, default=0.05, metavar="R",
                        help="pick the best setting among those recomputing at most this fraction (default 0.05)")
    add_out_argument(parser, default="lampc-demo", metavar="DIR", help="output directory (default ./lampc-demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, third-party warnings or logs")
    parser.set_defaults(run=run)


def run(args) -> int:
    formats = parse_formats(args.format)
    taus = parse_taus(args.tau) or list(DEMO_TAUS)
    if isinstance(taus, dict):
        raise CliError(f"--tau: the demo sweeps the {RULE} rule only; give a plain list, e.g. --tau 10,2,0.5")
    try:
        plan_cells(formats, [RULE], taus)
    except ValueError as err:
        raise CliError(f"--tau: {err}") from None
    if not 0.0 < args.max_rate <= 1.0:
        raise CliError(f"--max-rate: must be a rate in (0, 1], got {args.max_rate}")
    check_data_arguments(args)
    model, tokenizer = load(args.model)
    check_context(model, args)

    from .report_table import DEMO_COLUMNS, comparisons, format_table, with_kl_gain
    from .sweep import Sweep, load_sequences, metadata, write_outputs

    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    sequences, dataset = load_sequences(tokenizer, text=args.text, seq_len=args.seq_len, n_seq=args.n_seq,
                                        seed=args.seed, shuffle=args.shuffle)
    info = {"model": args.model, "seed": args.seed, "n_seq": args.n_seq, "seq_len": args.seq_len,
            "dataset": dataset, "shuffle": args.shuffle}
    print(f"lampc demo: {args.model}, {args.n_seq} x {args.seq_len} tokens of {dataset}"
          f"{' (shuffled)' if args.shuffle else ''}, formats {', '.join(formats)}", file=sys.stderr)
    sweep = Sweep(model, sequences, batch_size=args.batch_size, info=info, progress=not args.quiet)
    grid = [Cell(f, NO_LOOKAHEAD) for f in formats] + [Cell(f, RULE, t) for f in formats for t in taus]
    rows = sweep.run(grid)
    picked = {f: pick(rows, f, args.max_rate) for f in formats}
    baselines = [Cell(f, c, row["tau"], RULE) for f, row in picked.items() for c in SAME_COUNT_BASELINES]
    rows += sweep.run(baselines)
    write_outputs(rows, args.out, metadata(sweep, grid + baselines, command=command_line(args, "demo"), started=started,
                                           max_rate=args.max_rate))

    rows = with_kl_gain(rows)
    shown = []
    for f in formats:
        tau = picked[f]["tau"]
        shown += [r for r in rows if r["format"] == f and (r["criterion"] == NO_LOOKAHEAD or r["tau"] == tau)]
    print(format_table(shown, DEMO_COLUMNS))
    print()
    for line in verdict_lines(comparisons(rows), picked):
        print(line)
    print(f"\n{RULE} picked per format: the lowest KL at a recompute rate <= {100 * args.max_rate:g}% "
          f"(of the taus {', '.join(f'{t:g}' for t in taus)}); random and oracle recompute exactly as many entries "
          f"per row. KL reduction = KL(uniform) / KL.")
    print(f"{time.perf_counter() - t0:.0f} s; wrote {describe_outputs(args.out)} (plot: kl_vs_rate.png)")
    return 0


def verdict_lines(pairs: list[dict], picked: dict[str, dict]) -> list[str]:
    """One line per picked row and baseline: the KL reduction with its paired 95% interval and the flips, each with
    whether the difference is beyond the noise of these windows (report_table.comparisons)."""
    out = []
    for fmt, row in picked.items():
        for c in pairs:
            if c["format"] != fmt or c["criterion"] != RULE or c["tau"] != row["tau"]:
                continue
            out.append(f"{fmt} {RULE} tau={row['tau']:g} vs {c['baseline']}: {kl_factor(c)} ({c['kl_verdict']}); flips "
                       f"{c['flips_test']} vs {c['flips_base']} (McNemar p={c['flip_p']:.2g}: {c['flip_verdict']})")
    return out


def kl_factor(c: dict) -> str:
    """'KL 16.9x below [8.14, 29.4]' (the baseline's KL over the rule's), or 'above' with the inverse factor."""
    ratio, lo, hi = c["kl_ratio"], c["kl_ratio_lo"], c["kl_ratio_hi"]
    if ratio >= 1:
        return f"KL {ratio:.3g}x below [{lo:.3g}, {hi:.3g}]"
    return f"KL {1 / ratio:.3g}x above [{1 / hi:.3g}, {1 / lo:.3g}]"


def pick(rows: list[dict], fmt: str, max_rate: float) -> dict:
    """The rule's row with the lowest KL at a rate <= max_rate; if none is that low, the lowest-rate row."""
    candidates = [r for r in rows if r["format"] == fmt and r["criterion"] == RULE]
    within = [r for r in candidates if r["recompute_rate"] <= max_rate and r["kl"] == r["kl"]]
    if within:
        return min(within, key=lambda r: (r["kl"], r["recompute_rate"]))
    return min(candidates, key=lambda r: r["recompute_rate"])
