"""exp, tanh, sigmoid and the normal CDF and density for the Numba kernels, written so loops over them vectorise.

Why they exist: Numba >= 0.62 no longer links Intel's SVML, so a loop calling math.exp,
math.tanh or math.erf makes one scalar libm call per element -- sigmoid, tanh and GELU ran
3-20x slower than PyTorch's SIMD versions. These functions are plain float32 arithmetic,
selects, a floor and one bit cast, which LLVM turns into 16-lane vector instructions when
they are inlined into a loop: engine.cpu.parallel registers every function in FUNCTIONS
with Numba, inlined where a kernel calls it. This module imports no Numba itself, so the
float64 reference (whose rows name these functions in their scalar forms) loads without it.

Everything is float32 -- every constant below is a float32, because a Python float in the
arithmetic would make Numba compute in float64 at half the vector width. The errors,
measured over every class of float32 input in tests/test_vecmath.py, are a few float32
ulps. The kernels that inline them allow one fast-math liberty only, "contract" (a * b + c
may become one fused multiply-add, which rounds once: a quarter faster here); nothing is
reordered, so the vector body and the scalar remainder of a loop, and so any split of the
array over threads, give the same bits. Plain Python computes the same formulas one NumPy
scalar at a time (slowly), without the fused multiply-adds: within an ulp of the kernels.

    exp(x)          e^x: the argument reduced to x = k ln2 + r, |r| <= ln2/2, e^r by a
                    polynomial, 2^k put together from its exponent bits (in two halves, so
                    that results down to the denormals and up to the overflow are right);
                    +inf -> inf, -inf -> 0, NaN -> NaN
    tanh(x)         odd, an odd polynomial for |x| < 0.625 (no cancellation near 0), else
                    1 - 2 / (e^2|x| + 1); +-inf -> +-1, -0 -> -0
    sigmoid(x)      1 / (1 + e^-x), from e^-|x| (no overflow); 0 at -inf, 1 at +inf, and 0
                    below 1.0e-38 (x < -87.5, where it would be denormal)
    normal_cdf(x)   Phi(x) = (1 + erf(x / sqrt 2)) / 2 from erfc(|x| / sqrt 2); absolute
                    error below 3e-7 (its relative error grows in the far lower tail, and it
                    is 0 where it would be below 1e-38: x < -13.2)
    normal_pdf(x)   phi(x) = e^(-x^2/2) / sqrt(2 pi) (0 for |x| > 13.2)
"""
from __future__ import annotations

import numpy as np

f4 = np.float32
_ONE, _HALF, _TWO = f4(1.0), f4(0.5), f4(2.0)
# exp: Cody-Waite split of ln2 (_LN2_HI has 9 significant bits, so k * _LN2_HI is exact for
# |k| <= 150) and the Cephes expf polynomial for e^r = 1 + r + r^2 P(r)
_LOG2E, _LN2_HI, _LN2_LO = f4(1.44269504088896341), f4(0.693359375), f4(-2.12194440e-4)
_EXP_HI, _EXP_LO = f4(88.8), f4(-104.0)   # e^88.8 > float32 max: inf; e^-104 < half the least denormal: 0
_K_LO, _BIAS, _MANTISSA = f4(-150.0), f4(127.0), f4(8388608.0)  # 2^23
# _exp_negative: down to e^-87.5 = 1.0e-38, k >= -126 and 2^k is one normal float32 (the results
# a little below the least normal, 1.18e-38, are the multiply's correctly rounded denormals)
_NORMAL_LO, _K_NORMAL, _ZERO = f4(-87.5), f4(-126.0), f4(0.0)
_P0, _P1, _P2 = f4(1.9875691500e-4), f4(1.3981999507e-3), f4(8.3334519073e-3)
_P3, _P4, _P5 = f4(4.1665795894e-2), f4(1.6666665459e-1), f4(5.0000001201e-1)
# tanh for |x| < 0.625: x + x^3 Q(x^2) (Cephes tanhf)
_TANH_SMALL = f4(0.625)
_Q0, _Q1, _Q2 = f4(-5.70498872745e-3), f4(2.06390887954e-2), f4(-5.37397155531e-2)
_Q3, _Q4 = f4(1.33314422036e-1), f4(-3.33332819422e-1)
# erfc(z) = t P(t) e^(-z^2), t = 1 / (1 + p z), z >= 0 (Abramowitz & Stegun 7.1.26, as
# PyTorch's vectorised erf): absolute error below 1.5e-7. A 10-term fit with a relative
# bound (Numerical Recipes' erfcc) took twice as long here; the two differ only in the
# relative error of the far lower tail, where GELU's values are below 1e-7 anyway.
# In float32 its terms cancel for small z: the rounding costs up to 2.7e-7 there (a Taylor
# branch for |x| < 1 halved that, and cost a fifth of GELU's time).
_AS_P = f4(0.3275911)
_A1, _A2, _A3, _A4, _A5 = (f4(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_SQRT_HALF, _INV_SQRT_2PI = f4(0.70710678118654752), f4(0.39894228040143268)
# exp64: float64 constants (a float64 function), ln2 split so that k * _LN2_HI64 is exact
_EXP64_MAX, _LOG2E64 = 700.0, 1.4426950408889634
_LN2_HI64, _LN2_LO64 = 0.6931471803691238, 1.9082149292705877e-10
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9 = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320, 1 / 362880)


def _pow2(k):
    """2^k for an integral float32 k in [-126, 127], from its exponent bits."""
    return np.int32((k + _BIAS) * _MANTISSA).view(np.float32)


def _reduced(x):
    """(e^r, k) with x = k ln2 + r, k the integer nearest x / ln2, |r| <= ln2 / 2."""
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    return p * (r * r) + r + _ONE, k


def exp(x):
    x = f4(x)
    x = _EXP_HI if x > _EXP_HI else x            # written so NaN fails both tests and stays NaN
    x = _EXP_LO if x < _EXP_LO else x
    p, k = _reduced(x)                           # k in [-150, 128]
    k = k if k >= _K_LO else _K_LO               # NaN's k becomes a number (p carries the NaN)
    half = np.floor(k * _HALF)                   # 2^k = 2^half * 2^(k - half): each in range
    return p * _pow2(half) * _pow2(k - half)


def _exp_negative(x):
    """e^x for x <= 0, flushed to 0 below e^-87.5 = 1.0e-38 (denormal): exp without its
    overflow and denormal cases, a quarter cheaper, for sigmoid's e^-|x| and e^(-z^2) in the
    normal CDF and density (so they give 0 where they would be below 1e-38)."""
    x = f4(x)
    p, k = _reduced(_NORMAL_LO if x < _NORMAL_LO else x)
    k = k if k >= _K_NORMAL else _K_NORMAL       # NaN's k becomes a number (p carries the NaN)
    return _ZERO if x < _NORMAL_LO else p * _pow2(k)


def exp64(x):
    """e^x in float64, its error far below a float32 ulp: cast to float32 it is the correctly
    rounded e^x but for near-ties, as libm's. The softmax and cross-entropy kernels use it:
    Adam turns rounding noise in near-zero gradients into whole steps, and exp's 1-ulp errors
    moved LeNet's Adam loss 4e-4 off PyTorch's in 20 steps (libm's and PyTorch's: 1e-7).
    Eight lanes, not sixteen. |x| clamped to 700: 2^k stays one normal float64; NaN -> NaN."""
    x = np.float64(x)
    x = _EXP64_MAX if x > _EXP64_MAX else x
    x = -_EXP64_MAX if x < -_EXP64_MAX else x
    k = np.floor(x * _LOG2E64 + 0.5)
    r = x - k * _LN2_HI64 - k * _LN2_LO64                  # |r| <= ln2 / 2, nearly exact
    p = 1.0 + r * (1.0 + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * (_E7 + r * (
        _E8 + r * _E9))))))))                               # Taylor to r^9: the rest < 7e-12
    k = k if k >= -1022.0 else -1022.0                      # NaN's k becomes a number
    return p * np.int64((k + 1023.0) * 4503599627370496.0).view(np.float64)  # 2^k, 2^52 per step


def tanh(x):
    x = f4(x)
    a = abs(x)
    s = x * x
    small = a + a * s * ((((_Q0 * s + _Q1) * s + _Q2) * s + _Q3) * s + _Q4)
    big = _ONE - _TWO / (exp(a + a) + _ONE)     # e^2|x| = inf for |x| > 44: 1
    return np.copysign(small if a < _TANH_SMALL else big, x)  # tanh(-0) = -0 too


def sigmoid(x):
    x = f4(x)
    e = _exp_negative(-abs(x))                   # in [0, 1]: no overflow
    return (_ONE if x >= 0 else e) / (_ONE + e)  # 1 / (1 + e^-x) and e^x / (1 + e^x)


def normal_pdf(x):
    x = f4(x)
    z = abs(x) * _SQRT_HALF  # as normal_cdf computes it: where both are inlined, e^(-z^2) is made once
    return _INV_SQRT_2PI * _exp_negative(-z * z)


def normal_cdf(x):
    x = f4(x)
    z = abs(x) * _SQRT_HALF
    t = _ONE / (_ONE + _AS_P * z)
    lower = _HALF * t * ((((_A5 * t + _A4) * t + _A3) * t + _A2) * t + _A1) * _exp_negative(-z * z)  # Phi(-|x|)
    return _ONE - lower if x >= 0 else lower


FUNCTIONS = (_pow2, _reduced, exp, _exp_negative, exp64, tanh, sigmoid, normal_pdf, normal_cdf)
