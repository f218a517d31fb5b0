"""Numba twins of the hot loops; each has a NumPy reference and a test tying them together."""
