"""Pure tensor numerics: rounding onto a format's grid and low-precision-accumulator matmuls."""

from lampc.numerics.accumulate import lp_matmul, lp_product, native_matmul
from lampc.numerics.rounding import round_to, round_to_

__all__ = ["round_to", "round_to_", "lp_matmul", "lp_product", "native_matmul"]
