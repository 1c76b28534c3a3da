"""`lampc calibrate`: one threshold per site for a target recompute rate (or KL), written as a policy file.

    lampc calibrate --rate 0.05 --out calibrated.json            # the embedded model, strict, m4, attention
    lampc eval --policy calibrated.json --text other.txt          # compile, eval, generate, export and tasks take it

The policy options pick the format, kinds and rule (strict or relaxed; --tau sets the middle of the range each site
is measured over); the data options the calibration text. lampc/eval/calibrate.py describes the procedure.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..cli_policy import add_policy_arguments, compile_arguments
from ..cli_support import add_out_argument, check_writable_file
from .cli_eval import add_data_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="one tau per site for a target recompute rate or KL; writes a policy file",
        description="Measure, on calibration text, how much each site's threshold costs in recompute and gains in "
                    "KL, then set one tau per site so that the total recompute rate (or the KL against FP32) meets "
                    "the target with the least KL (or rate). Writes a policy file that --policy takes everywhere.")
    add_data_arguments(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--rate", type=float, default=None, help="target recompute rate over all sites, in (0, 1)")
    target.add_argument("--kl", type=float, default=None, help="target mean KL(FP32 || LAMP) on the calibration text")
    add_out_argument(parser, default="lampc-calibrated.json", metavar="FILE",
                     help="the policy file to write (default ./lampc-calibrated.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, third-party warnings or logs")
    add_policy_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    out = Path(args.out)
    check_writable_file(out, "--out")  # before the work, not after it
    from .calibrate import calibrate
    from .cli_eval import load

    model, tokenizer = load(args.model)
    policy, overrides = compile_arguments(args)
    calibration = calibrate(model, tokenizer, policy, rate=args.rate, kl=args.kl, text=args.text,
                            seq_len=args.seq_len, n_seq=args.n_seq, seed=args.seed, shuffle=args.shuffle,
                            batch_size=args.batch_size, progress=not args.quiet, **overrides)
    calibration.write(out)
    print(summary(calibration))
    print(f"wrote {out}")
    return 0


def summary(calibration) -> str:
    """The per-site taus and what was measured, as a few lines."""
    m = calibration.measured
    lines = [f"target {json.dumps(calibration.target)}: measured rate {100 * m['rate']:.2f}% (predicted "
             f"{100 * m['predicted_rate']:.2f}%), KL {m['kl']:.3g} (predicted {m['predicted_kl']:.3g}), flip rate "
             f"{100 * m['flip_rate']:.2f}% on the calibration text",
             "site  kind        module                          tau         rate"]
    for site in calibration.sites:
        tau = "no recompute" if site["tau"] is None else f"{site['tau']:.4g}"
        lines.append(f"{site['site']:>4}  {site['kind']:<10}  {site['module']:<30}  {tau:<10}  "
                     f"{100 * site['predicted_rate']:.2f}%")
    return "\n".join(lines)
