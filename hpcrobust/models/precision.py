"""Numerics of a model's weights and compute: fp32 master weights, autocast, activation checkpointing.

`models.N.torch_dtype: bfloat16` means bfloat16 *compute*: the weights, their gradients and the optimizer state
stay float32 (the master copy), and every forward (and so its backward) runs under `torch.autocast`, which
casts each matrix product's inputs to bfloat16. Updates smaller than bfloat16's resolution (8 bits of mantissa:
a step of lr 1e-5 on a weight of 1 is lost) are therefore kept, as in fp32 training. float16 is refused: without
loss scaling its gradients underflow and overflow (every weight was NaN after one step); the config says so
(models/config.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from hpcrobust.errors import UserError

MASTER_DTYPE = torch.float32  # weights, gradients and optimizer state, whatever the compute dtype
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def compute_in(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to `dtype` on `device` (nothing to do for float32); gradients flow back in the same dtypes."""
    if dtype == MASTER_DTYPE:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers that HF can recompute in the backward (its GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def check_checkpointing(hf_config, key: str) -> None:
    """Before any work: the architecture's classifier class must support HF's activation checkpointing."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(hf_config)]
    except KeyError:
        return  # an architecture from the folder's own code: found out when it loads
    if not getattr(cls, "supports_gradient_checkpointing", False):
        raise UserError(f"{key}.gradient_checkpointing: {cls.__name__} does not support gradient checkpointing")


def enable_checkpointing(model: nn.Module, name: str) -> None:
    """Per-layer activation checkpointing through HF's own switch (non-reentrant torch.utils.checkpoint)."""
    if not getattr(model, "supports_gradient_checkpointing", False) or not checkpointed_layers(model):
        raise UserError(f"{name}: {type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def set_checkpoint_training(model: nn.Module, flag: bool) -> None:
    """HF recomputes a layer only while that layer is in training mode. Dropout must stay off (numbers must not
    depend on the call pattern), so only the layer objects themselves are flagged, not their children."""
    for layer in checkpointed_layers(model):
        layer.training = flag
