"""What every `lampc` subcommand shares: the user-error class, --model, the type of --budget, what --quiet silences."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A user error on the command line: printed as `lampc: error: ...`, exit status 2."""


def add_model_argument(parser) -> None:
    """--model, as every subcommand that loads a model spells it."""
    parser.add_argument("--model", default="embedded", help="'embedded' (default), a known name, or a model directory")


def budget_arg(text: str):
    """argparse type of --budget: an int k per row or a fraction (SitePolicy.budget)."""
    from .policy import parse_budget

    try:
        return parse_budget(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int k or a fraction, got {text!r}") from None


def silence_third_party() -> None:
    """--quiet: no transformers/huggingface progress bars, info logs or Python warnings; lampc's own results and
    errors still print."""
    import logging
    import os
    import warnings

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    warnings.simplefilter("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
