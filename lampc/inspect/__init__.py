"""Inspection: listings of rewritten graphs."""

from .show import render, show

__all__ = ["render", "show"]
