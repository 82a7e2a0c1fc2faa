"""The CuPy backend: the same rules on a GPU, with their elementwise arithmetic fused.

Convolutions and their adjoints are the base class's im2col/col2im code on
CuPy arrays (strided views, cuBLAS matmuls).  The arithmetic of the rules
(safe divisions, sign splits, masks and shares of docs/rules.md, rap) runs as
single CuPy ElementwiseKernels instead of chains of temporaries.
"""
from __future__ import annotations

import cupy

from .backend import Backend

_SDIV = cupy.ElementwiseKernel("T a, T b", "T out", "out = b != 0 ? a / b : (T)0", "onnxrap_sdiv")

# P() of docs/rules.md, rap.hidden, as Backend.rap_shares computes it: ta = sdiv(R+, Za) (+ the R- term for
# dense ops), tb = sdiv(R Zb/(Za+Zb), Zb) (+ the R- term for convolutions), in one pass.
_RAP_SHARES = cupy.ElementwiseKernel(
    "T r, T za, T zb, bool conv", "T ta, T tb",
    """
    T total = za + zb;
    T share = total != 0 ? zb / total : (T)0;
    T rp = r > 0 ? r : (T)0;
    T rn = r < 0 ? r : (T)0;
    ta = za != 0 ? rp / za : (T)0;
    tb = zb != 0 ? r * share / zb : (T)0;
    if (conv) { tb += zb != 0 ? rn / zb : (T)0; }
    else      { ta += za != 0 ? rn / za : (T)0; }
    """,
    "onnxrap_rap_shares")

_SHIFT = cupy.ElementwiseKernel("T c, T delta", "T out", "out = c != 0 ? c - delta : c", "onnxrap_shift")


class CupyBackend(Backend):
    def __init__(self):
        super().__init__(cupy, "cuda")

    def to_host(self, a):
        return cupy.asnumpy(a)

    def sdiv(self, a, b):
        return _SDIV(a, b)

    def rap_shares(self, R, za, zb, conv):
        return _RAP_SHARES(R, za, zb, bool(conv))

    def shift(self, C, delta):
        return _SHIFT(C, delta)
