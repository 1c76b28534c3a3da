"""`lampc formats`: the table of number formats."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("formats", help="list the number formats lampc models",
                                   description="List the number formats lampc models (mantissa-only m1..m23 and "
                                               "full formats), with mantissa/exponent bits, range and unit roundoff.")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..formats import formats_table

    print(formats_table())
    return 0
