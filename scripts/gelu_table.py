"""The coefficients of the native kernels' table GELU (lkdn_cpu.cpp, `LKDN_GELU_TABLE`), printed as C++.

GELU(x) = x / 2 + |x| h(|x|), with h(a) = erf(a / sqrt 2) / 2. The table GELU (AVX-512) scales |x| onto s in
[0, 31] (s = |x| 31 / 6), rounds s to one of 32 intervals, j, and evaluates a quartic in u = s - j in
[-1/2, 1/2] whose five coefficients it picks from 32-entry tables by one two-register permute each: 16 vector
operations against the rational erf's 22. The last interval holds h = 1/2 exactly, so that GELU is exactly 0 or x for
|x| >= 6 (1 - erf(6 / sqrt 2) is 2e-9). Each quartic is a weighted minimax fit (Lawson's iterations on least
squares) of h: GELU's error is |x| times h's and its bound is 5e-7 max(1, |x|), so h's error is weighted by
min(1, a). Cubics (14 operations) are within that bound too (3e-7), but their error, spread evenly over x, moved
the network's output up to 1.7e-5 from the reference where the rational's is 1.2e-5; the quartics' (1.2e-7)
leaves it where the rational's does. (AVX2's permute holds 8 floats: 8 intervals need degree 6, 21 operations,
and such a GELU was no faster than the rational in the whole network.)

`python scripts/gelu_table.py` prints the table; tests/test_native_inference.py checks that the kernels' copy
matches this fit and that the GELU it computes is torch's exact GELU to that bound.
"""

from __future__ import annotations

import math

import numpy as np

REACH = 6.0  # |x| from which GELU is 0 or x exactly
INTERVALS, DEGREE = 32, 4
_NODES, _ROUNDS = 400, 60
_erf = np.vectorize(math.erf)


def half_erf(a: np.ndarray) -> np.ndarray:
    """h(a) = erf(a / sqrt 2) / 2 = Phi(a) - 1/2, in float64."""
    return 0.5 * _erf(a / math.sqrt(2.0))


def fit() -> np.ndarray:
    """(DEGREE + 1, INTERVALS) float64: coefficient d of interval j's quartic in u at [d, j]."""
    scale = (INTERVALS - 1) / REACH
    table = np.zeros((DEGREE + 1, INTERVALS))
    for j in range(INTERVALS):
        lo, hi = max(-0.5, -j), min(0.5, INTERVALS - 1 - j)
        u = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(_NODES) + 0.5) / _NODES)
        a = (j + u) / scale
        target = half_erf(a)
        weight = np.minimum(a, 1.0) + 1e-12
        powers = np.vander(u, DEGREE + 1, increasing=True)
        last = j == INTERVALS - 1  # its constant is 1/2 exactly: the saturation
        if last:
            powers, target = powers[:, 1:], target - 0.5
        lawson = np.full(_NODES, 1.0 / _NODES)
        for _ in range(_ROUNDS):
            w = weight * np.sqrt(lawson)
            c, *_ = np.linalg.lstsq(powers * w[:, None], target * w, rcond=None)
            error = np.abs(powers @ c - target) * weight
            lawson = lawson * (error + 1e-30)
            lawson /= lawson.sum()
        table[:, j] = np.concatenate([[0.5], c]) if last else c
    return table


def cpp(table: np.ndarray) -> str:
    """The table as lkdn_cpu.cpp holds it: each coefficient's float32 literals, six to a line."""
    rows = []
    for d, row in enumerate(table.astype(np.float32)):
        values = [f"{float(v):.9e}f" for v in row]
        lines = [", ".join(values[i : i + 6]) for i in range(0, len(values), 6)]
        rows.append(f"    {{// u^{d}\n     " + ",\n     ".join(lines) + "},")
    terms, intervals = table.shape
    return f"alignas(64) constexpr float kGeluTable[{terms}][{intervals}] = {{\n" + "\n".join(rows) + "\n};"


if __name__ == "__main__":
    print(cpp(fit()))
