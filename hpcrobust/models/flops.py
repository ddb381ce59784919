"""FLOP accounting, done where the compute is spent (invariant 5).

Two numbers are kept for every model call:
- nominal: the paper's convention, 2·N·T forward and 4·N·T backward, as if nothing were cached,
  with N the model's parameter count and T the tokens of the full sequences;
- actual: what the call really multiplied: the linear layers over the tokens actually fed in,
  attention over the keys actually attended to (cache included), and only the head rows used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FlopCount:
    """Exact integers, so totals do not depend on the order in which ranks add them up."""

    nominal: int = 0
    actual: int = 0
    forward_tokens: int = 0  # T summed over forward calls (nominal convention)
    backward_tokens: int = 0

    def add(self, other: FlopCount) -> None:
        self.nominal += other.nominal
        self.actual += other.actual
        self.forward_tokens += other.forward_tokens
        self.backward_tokens += other.backward_tokens

    def snapshot(self) -> FlopCount:
        return FlopCount(self.nominal, self.actual, self.forward_tokens, self.backward_tokens)

    def since(self, start: FlopCount) -> FlopCount:
        return FlopCount(self.nominal - start.nominal, self.actual - start.actual,
                         self.forward_tokens - start.forward_tokens, self.backward_tokens - start.backward_tokens)


@dataclass
class ArchShape:
    """What the actual-FLOP formula needs to know about a decoder stack."""

    n_params: int  # N for the nominal convention: every parameter of the model
    layer_linear_params: int  # weights of all nn.Linear (and HF Conv1D) inside the decoder layers
    n_layers: int
    hidden: int  # query width (heads x head_dim) used in attention matmuls
    kv_hidden: int
    n_labels_head: int  # output rows of the head (2 for a classifier, vocab for an LM)
    head_in: int  # input width of the head


def _is_dense(m: nn.Module) -> bool:
    """A weight matrix applied to every token: nn.Linear, or transformers' Conv1D (GPT-2's transposed linear)."""
    if isinstance(m, nn.Linear):
        return True
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers without Conv1D
        return False
    return isinstance(m, Conv1D)


def arch_shape(model: nn.Module, backbone: nn.Module, head: nn.Linear) -> ArchShape:
    cfg = model.config
    layers = None
    for name in ("layers", "h", "layer"):
        if hasattr(backbone, name):
            layers = getattr(backbone, name)
            break
    if layers is None:
        raise ValueError("cannot find the decoder layers of this model")
    linear = sum(m.weight.numel() for m in layers.modules() if _is_dense(m))
    hidden = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    return ArchShape(
        n_params=sum(p.numel() for p in model.parameters()),
        layer_linear_params=linear,
        n_layers=len(layers),
        hidden=n_heads * head_dim,
        kv_hidden=n_kv * head_dim,
        n_labels_head=head.weight.shape[0],
        head_in=head.weight.shape[1],
    )


def forward_flops(a: ArchShape, batch: int, q_len: int, kv_len: int, head_rows: int,
                  full_len: int | None = None, real_tokens: int | None = None) -> FlopCount:
    """One forward over `batch` sequences of `q_len` new tokens attending to `kv_len` keys.

    `head_rows` is how many positions the head is applied to in total; `full_len` is the uncached
    sequence length for the nominal count (defaults to kv_len); `real_tokens` overrides the
    nominal token count (padding excluded).
    """
    tokens = batch * q_len
    linear = 2 * a.layer_linear_params * tokens
    # QK^T and AV: each 2·q·kv·width per layer (SDPA computes the full rectangle, mask or not).
    attn = 4 * a.n_layers * batch * q_len * kv_len * a.hidden
    head = 2 * head_rows * a.head_in * a.n_labels_head
    nominal_tokens = real_tokens if real_tokens is not None else batch * (full_len if full_len else kv_len)
    return FlopCount(nominal=2 * a.n_params * nominal_tokens, actual=linear + attn + head,
                     forward_tokens=nominal_tokens)


def backward_flops(fwd: FlopCount, a: ArchShape, weights_need_grad: bool, recompute: bool = False) -> FlopCount:
    """Backward of a forward: input grads always, weight grads when the weights are trained, and the forward
    once more (actual only) when checkpointed layers recompute their activations."""
    factor = (2 if weights_need_grad else 1) + (1 if recompute else 0)
    return FlopCount(nominal=2 * fwd.nominal, actual=factor * fwd.actual,
                     backward_tokens=fwd.forward_tokens)


class FlopMeter:
    """The running total for one model; every counted call adds to it."""

    def __init__(self) -> None:
        self.total = FlopCount()

    def add(self, c: FlopCount) -> None:
        self.total.add(c)

    def count_backward_on(self, out: torch.Tensor, fwd: FlopCount, a: ArchShape, weights_need_grad: bool,
                          recompute: bool = False) -> None:
        """Count the backward when (and only when) a gradient really flows through `out`."""
        if not out.requires_grad:
            return
        bwd = backward_flops(fwd, a, weights_need_grad, recompute)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            self.add(bwd)
            return grad

        out.register_hook(hook)
