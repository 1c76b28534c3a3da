"""`lampc tasks`: lm-eval tasks on a LAMP model and on FP32, paired document by document.

    lampc tasks --model embedded --tasks austen_lastword,austen_choice --limit 100 --format m4 --criterion strict \
        --tau 0.1 --out results/

(It sits beside cli.py, not in lampc/tasks/, so that `lampc tasks --help` imports no lm-eval: importing that package
registers lampc's model with lm-eval.)

runs lm-evaluation-harness on the FP32 model and on the model compiled with the policy options, prints the paired
table (score ± stderr, flips right->wrong / wrong->right, McNemar p, KL, recompute rate) and writes tasks.csv,
tasks.json, tasks.md and lm-eval's results_<cell>.json under --out. Tasks: lampc's offline ones
(austen_lastword, austen_choice, austen_paragraphs; the default) or any task lm-eval knows, where its data can be
had (a machine with network access, or a local dataset cache); one whose data cannot be had is refused by name
before any model runs. Progress goes to stderr: each cell and task as it starts and ends, and the requests done
every few seconds. Under the table, notes say what a bare number does not (a stderr of 0 when every answer was
wrong, with a bound on the rate).
"""

from __future__ import annotations

from pathlib import Path

from .cli_policy import add_policy_arguments, compile_arguments
from .cli_support import CliError, add_model_argument, add_out_argument
from .eval.cli_eval import check_writable_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("tasks", help="lm-eval tasks on a LAMP model, paired with FP32",
                                   description=__doc__.splitlines()[0])
    add_model_argument(parser)
    parser.add_argument("--tasks", default="austen_lastword,austen_choice,austen_paragraphs", metavar="LIST",
                        help="comma-separated lm-eval task names (default: lampc's three offline tasks)")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8, dest="batch_size")
    add_out_argument(parser, dest="output", default=None, metavar="DIR",
                     help="write tasks.csv/json/md and lm-eval's results")  # --output is taken too
    parser.add_argument("--name", default=None, help="the cell's name in the table (default: its policy in words)")
    add_policy_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive number of documents, got {args.limit}")
    if args.output:
        check_writable_dir(Path(args.output), "--out")
    from .tasks import MISSING
    from .tasks.compare import compare, markdown, resolve_tasks, write

    if MISSING:
        raise CliError(MISSING)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise CliError("--tasks: give at least one task name")
    tasks = resolve_tasks(names)
    policy, overrides = compile_arguments(args)
    fields = _model_args(policy, overrides)
    name = args.name or _cell_name(policy, overrides)
    rows, raw = compare(args.model, {name: fields}, tasks, limit=args.limit, batch_size=args.batch_size,
                        lm_eval_logs=getattr(args, "verbose", False))  # --verbose: lm-eval's logs too
    print(markdown(rows), end="")
    if args.output:
        for path in write(rows, raw, Path(args.output)):
            print(f"wrote {path}")
    return 0


def _model_args(policy, overrides: dict) -> dict:
    """LampcLM's keyword arguments for the cell: the policy file (if any) and the option overrides."""
    fields = dict(overrides)
    if "kinds" in fields:
        fields["kinds"] = "+".join(fields["kinds"])
    if policy is not None:
        fields["policy"] = policy
    return fields


def _cell_name(policy, overrides: dict) -> str:
    """The cell's label: the format and rule of its first site kind (the policy file's, with the options)."""
    from .policy import Policy

    full = Policy.from_overrides(policy, **overrides)
    site = getattr(full, full.enabled_kinds()[0])
    rule = f"{site.criterion}, per-site taus" if full.per_site else site.rule_text
    return f"{site.format.name} {rule}"
