"""Numba kernels for float32 on the CPU, one module per op family, same names as
engine.reference (the spec they are tested against)."""
