"""One run's classifier sharded across its group's ranks with PyTorch FSDP (`fully_shard`, FULL_SHARD).

Each decoder layer is one FSDP unit; the rest (embeddings, final norm, head) is the root unit, a thin
wrapper whose forward runs whatever the classifier asks. Every parameter, gradient and optimizer state
lives as a 1/k shard on each of the k ranks; a unit's full weights exist only while it computes
(all-gathered before its forward and again for its backward, freed right after), and gradients are
summed across the group by reduce-scatter. On GPUs this is NCCL on the device; on CPU, gloo.

FSDP's forward and backward are collectives, so the ranks of a group must enter the model in step:
the same number of passes, of the same kind, in the same order, even though each rank computes on its
own data (its micro-batches, its candidate chunks). Before each pass every rank announces its kind in a
tiny all-reduce ("fwd": one forward, "grad": an input gradient, "train": forward and backward into the
weights); a rank that has run out of work calls `sync()`, which keeps answering those announcements with
tiny passes of the same kind until every rank of the group has reached `sync()` (the Join pattern).
Between two syncs the code makes passes of one kind only. Padding passes are not counted as compute and
change no number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from hpcrobust.models.classifier import Classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.parallel.distributed import TorchGroup

KINDS = ("fwd", "grad", "train")


class _Entry(nn.Module):
    """The FSDP root: its forward runs `fn` while the root unit's weights are gathered."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], object]) -> object:
        return fn()


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    for name in ("layers", "h", "layer"):
        if isinstance(getattr(backbone, name, None), nn.ModuleList):
            return getattr(backbone, name)
    raise ValueError("cannot find the decoder layers of this model to shard them")


@dataclass
class ShardState:
    """What a sharded classifier carries: its FSDP root and the group it passes in step with."""

    clf: Classifier
    root: nn.Module
    units: list[nn.Module]
    tg: TorchGroup
    group: Comm
    inside: bool = False
    padding: bool = False
    passes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # real ones (diagnostics)

    def _announce(self, kind: str) -> str:
        """Every rank says what its next pass is (or "" at a sync); returns the kind the group is making."""
        t = torch.zeros(len(KINDS), dtype=torch.int64, device=self.tg.device)
        if kind:
            t[KINDS.index(kind)] = 1
        dist.all_reduce(t, group=self.tg.pg)
        kinds = [k for k, n in zip(KINDS, t.tolist(), strict=True) if n]
        if len(kinds) > 1:  # every rank sees the same sum, so every rank stops here
            raise RuntimeError(f"sharded model: ranks of a group made passes of different kinds {kinds}")
        return kinds[0] if kinds else ""

    def enter(self, fn: Callable[[], object], kind: str) -> object:
        """One pass through the model: an FSDP root forward that every rank of the group makes in step."""
        if self.inside:
            return fn()
        if not self.padding:
            self._announce(kind)
            self.passes[kind] += 1
        self.inside = True
        try:
            return self.root(fn)
        finally:
            self.inside = False

    def sync(self) -> None:
        """Pad with tiny passes while any rank of the group still makes real ones (collective, like Join)."""
        while kind := self._announce(""):
            self.padding = True
            try:
                pad_pass(self.clf, kind)
            finally:
                self.padding = False


def shard_classifier(clf: Classifier, tg: TorchGroup, group: Comm) -> Classifier:
    """Shard `clf` (loaded on CPU) over the group in place; its shards move to the group's device."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(tg.pg, device_type=tg.device.type)
    units: list[nn.Module] = []
    for layer in decoder_layers(clf.backbone):
        units.append(fully_shard(layer, mesh=mesh, reshard_after_forward=True))
    root = fully_shard(_Entry(clf.model), mesh=mesh, reshard_after_forward=True)
    units.append(root)
    for u in units:
        u.set_force_sum_reduction_for_comms(True)  # gloo has no AVG; and the loss is already per batch
        u.set_gradient_divide_factor(1.0)  # gradients are summed across the group, never averaged
    clf.shard = ShardState(clf, root, units, tg, group)
    clf.backoff.cuts = False
    return clf


def is_sharded(clf: Classifier) -> bool:
    return getattr(clf, "shard", None) is not None


def sync(clf: Classifier) -> None:
    """End a stretch of passes of one kind (no-op for an unsharded model)."""
    if is_sharded(clf):
        clf.shard.sync()


# ---------------------------------------------------------------- padding passes and the input gradient

def _tiny(clf: Classifier) -> torch.Tensor:
    return torch.tensor([[clf.tokenizer.pad_token_id or 0]], dtype=torch.long, device=clf.device)


def pad_pass(clf: Classifier, kind: str) -> None:
    """A pass that only keeps the group's collectives in step: its result is dropped, its FLOPs not counted."""
    before = clf.meter.total.snapshot()
    if kind == "fwd":
        with torch.no_grad():
            clf.logits(_tiny(clf))
    elif kind == "grad":
        input_gradient(clf, [], torch.zeros(0, dtype=torch.long, device=clf.device), torch.tensor([0]),
                       lambda logits: logits.sum())
    else:
        (clf.logits(_tiny(clf)).sum() * 0.0).backward()
    clf.meter.total = before


def input_gradient(clf: Classifier, before: list[int], after: torch.Tensor, tokens: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """d loss_fn(logits) / d(one-hot attack tokens) on a sharded model, as one 'grad' pass (GCG's gradient).

    The same arithmetic as the unsharded path (the prompt's keys/values from its own forward, then
    `one_hot @ embedding` for the attack), so the gradient is the same number; the prompt is recomputed
    inside the pass (not counted: the scoring engine counts it once) so that every such pass has the same
    collectives. A prompt-less example runs a one-token stand-in for that reason.
    """

    held: dict[str, torch.Tensor] = {}  # kept out of the root's outputs, which get FSDP's backward hooks

    def body() -> torch.Tensor:
        start = clf.meter.total.snapshot()
        prefix = clf.prefix_cache(list(before) if before else _tiny(clf)[0].tolist())
        clf.meter.total = start
        if not before:
            prefix = ()
        w = clf.embedding.weight
        one_hot = torch.zeros(len(tokens), w.shape[0], dtype=w.dtype, device=w.device)
        one_hot[torch.arange(len(tokens)), tokens.to(w.device)] = 1
        one_hot.requires_grad_(True)
        held["one_hot"] = one_hot
        tail = torch.cat([one_hot @ w, clf.embedding(after)], dim=0)[None]
        return loss_fn(clf.logits_cached(prefix, tail_embeds=tail))

    loss = clf.shard.enter(body, "grad")
    (grad,) = torch.autograd.grad(loss, held["one_hot"])
    return grad


# ---------------------------------------------------------------- weights and memory

def full_weights(clf: Classifier) -> dict[str, torch.Tensor] | None:
    """The whole state dict on the group leader (CPU), for a checkpoint in the usual format; collective.

    None for an unsharded model (it saves its own weights) and on the other ranks.
    """
    if not is_sharded(clf):
        return None
    lead = clf.shard.group.rank == 0
    out: dict[str, torch.Tensor] = {}
    for name, t in clf.model.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        if lead:
            out[name] = full.detach().to("cpu", copy=True)
    return out if lead else None


def local_numel_bytes(tensors) -> int:
    """Bytes this rank holds for `tensors` (a DTensor counts only its local shard)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def resident_bytes(clf: Classifier, opt: torch.optim.Optimizer | None = None) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) held by this rank."""
    params = local_numel_bytes(clf.model.parameters())
    states = 0
    if opt is not None:
        states = local_numel_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
                                   and v.dim() > 0)
    return params, states
