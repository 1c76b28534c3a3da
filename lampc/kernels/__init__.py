"""Fast kernels behind lampc's readable references (lampc/numerics): C for the CPU, Triton for CUDA.

Each kernel gives its reference's bits and is tested against it (tests/test_fast_lp_matmul.py,
tests/test_triton_kernels.py). Modules here import nothing of lampc but lampc.formats.
"""
