"""Bit-identical numbers for any thread count on CPU, so any rank count stores the same file.

Two things vary with the thread count on CPU: BLAS splits the inner dimension of a matrix
product across threads, and LayerNorm's backward reduces its weight and bias gradients with
per-thread partial sums. MKL's strict conditional numerical reproducibility mode
(`MKL_CBWR=AUTO,STRICT`, set before MKL starts) fixes the first; LayerNorm's affine gradients
are computed here as matrix products, which that mode makes thread-invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Affine(torch.autograd.Function):
    """y = x * w + b over the last dim, with w/b gradients as (ones @ rows): a fixed reduction order."""

    @staticmethod
    def forward(ctx, xhat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(xhat, weight)
        ctx.has_bias = bias is not None
        out = xhat * weight
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xhat, weight = ctx.saved_tensors
        d = grad.shape[-1]
        g2 = grad.reshape(-1, d)
        ones = torch.ones(1, g2.shape[0], dtype=grad.dtype, device=grad.device)
        gx = grad * weight if ctx.needs_input_grad[0] else None
        gw = (ones @ (g2 * xhat.reshape(-1, d))).reshape(d) if ctx.needs_input_grad[1] else None
        gb = (ones @ g2).reshape(d) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class ThreadInvariantLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not self.elementwise_affine:
            return super().forward(x)
        xhat = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return _Affine.apply(xhat, self.weight, self.bias)


def make_thread_invariant(model: nn.Module) -> nn.Module:
    """Swap every LayerNorm's class in place: same parameters, same state dict, fixed reduction order."""
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = ThreadInvariantLayerNorm
    return model
