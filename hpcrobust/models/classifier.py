"""A causal LM read as a 2-label classifier at its last token, with every call counted.

Only the head rows that matter are computed (the last real token of each sequence), and the
prompt before the attack can be run once and reused from a key/value cache by every candidate.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from hpcrobust.models.backoff import Backoff
from hpcrobust.models.flops import ArchShape, FlopCount, FlopMeter, arch_shape, forward_flops
from hpcrobust.models.precision import MASTER_DTYPE, compute_in, set_checkpoint_training
from hpcrobust.models.pretrain import UNKNOWN, Pretraining


class Classifier:
    """`compute_dtype` is what the matrix products run in (autocast); the weights stay float32 (precision.py).
    `checkpointing`: the decoder layers recompute their activations in the backward of training steps."""

    def __init__(self, hf_model: nn.Module, tokenizer, name: str, pretraining: Pretraining = UNKNOWN,
                 compute_dtype: torch.dtype = MASTER_DTYPE, checkpointing: bool = False) -> None:
        self.model = hf_model
        self.tokenizer = tokenizer
        self.name = name
        self.backbone = hf_model.base_model
        head = getattr(hf_model, "score", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"{name}: no linear `score` head; only causal-LM backbones are supported")
        self.head = head
        self.shape: ArchShape = arch_shape(hf_model, self.backbone, head)
        self.meter = FlopMeter()
        self.backoff = Backoff()  # the run's remembered batch sizes (the sweep hands every round the run's own)
        self.pretraining = pretraining
        self.compute_dtype = compute_dtype
        self.checkpointing = checkpointing
        self._recomputes = False  # checkpointed layers active (training steps only)
        params = inspect.signature(self.backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.shard = None  # set by parallel/sharding.py when the group's ranks hold the weights as FSDP shards

    def _enter(self, fn, kind: str = ""):
        """Run `fn` as one pass through the model. Unsharded: just `fn()`; sharded: one FSDP root forward,
        which the ranks of the group make in step (parallel/sharding.py keeps that rule)."""
        if self.shard is None:
            return fn()
        if not kind:
            kind = "train" if torch.is_grad_enabled() and self.weights_need_grad() else "fwd"
        return self.shard.enter(fn, kind)

    # ------------------------------------------------------------ properties
    @property
    def pretrain_flops(self) -> float:
        return self.pretraining.flops

    @property
    def n_params(self) -> int:
        return self.shape.n_params

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (what a BEAST sampler beside this model runs in)."""
        return self.compute_dtype

    def autocast(self):
        return compute_in(self.device, self.compute_dtype)

    @property
    def embedding(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def weights_need_grad(self) -> bool:
        return self.head.weight.requires_grad

    def set_trainable(self, flag: bool) -> None:
        self.model.train(False)  # no dropout anywhere: numbers must not depend on the call pattern
        for p in self.model.parameters():
            p.requires_grad_(flag)
        self._recomputes = flag and self.checkpointing
        if self.checkpointing:
            set_checkpoint_training(self.model, flag)

    @property
    def shares_prefix_in_training(self) -> bool:
        """Checkpointed layers drop a key/value cache, so training then runs every row's whole sequence."""
        return not self._recomputes

    # ------------------------------------------------------------ counted calls
    def _count(self, logits: torch.Tensor, fwd: FlopCount) -> torch.Tensor:
        self.meter.add(fwd)
        self.meter.count_backward_on(logits, fwd, self.shape, self.weights_need_grad(), recompute=self._recomputes)
        return logits

    def _head(self, hidden: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
        if last is None:
            rows = hidden[:, -1]
        else:
            rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(rows).float()

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 2] for right-padded sequences (the head reads each one's last real token)."""
        return self._enter(lambda: self.logits_from_embeds(self.embedding(input_ids), attention_mask))

    def logits_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                           cache: DynamicCache | None = None, prefix_len: int = 0) -> torch.Tensor:
        return self._enter(lambda: self._logits_from_embeds(embeds, attention_mask, cache, prefix_len))

    def _logits_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                            cache: DynamicCache | None, prefix_len: int) -> torch.Tensor:
        b, t = embeds.shape[:2]
        kwargs = {"inputs_embeds": embeds, "use_cache": cache is not None}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if attention_mask is not None:
            full = attention_mask
            if prefix_len:
                full = torch.cat([attention_mask.new_ones(b, prefix_len), attention_mask], dim=1)
            kwargs["attention_mask"] = full
        last = None
        real = None
        if attention_mask is not None:
            last = attention_mask.sum(dim=1) - 1
            real = int(attention_mask.sum()) + b * prefix_len
        with self.autocast():
            logits = self._head(self.backbone(**kwargs).last_hidden_state, last)
        fwd = forward_flops(self.shape, b, t, prefix_len + t, head_rows=b, full_len=prefix_len + t,
                            real_tokens=real)
        return self._count(logits, fwd)

    def logits_shared_prefix(self, prefix: list[int], rest_ids: torch.Tensor, rest_mask: torch.Tensor
                             ) -> torch.Tensor:
        """Logits [B, 2] for `prefix + rest` where every row starts with the same `prefix`.

        The prefix runs once (batch 1) and its keys/values are broadcast to the batch; gradients
        flow back through the broadcast, so this also trains. Used when a micro-batch shares its
        instructions; nominal FLOPs still charge every row its whole sequence. A sharded model makes this
        two passes (prefix, then the rest), so it is for inference only there.
        """
        b, t = rest_ids.shape
        p = len(prefix)

        def run_prefix() -> DynamicCache:
            cache = DynamicCache()
            self.backbone(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                          **{self._cache_kw: cache})
            return cache

        def run_rest(cache: DynamicCache) -> torch.Tensor:
            kv = [(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1)) for layer in cache.layers]
            batch_cache = DynamicCache(ddp_cache_data=kv)
            full_mask = torch.cat([rest_mask.new_ones(b, p), rest_mask], dim=1)
            hidden = self.backbone(inputs_embeds=self.embedding(rest_ids), attention_mask=full_mask, use_cache=True,
                                   **{self._cache_kw: batch_cache}).last_hidden_state
            return self._head(hidden, rest_mask.sum(dim=1) - 1)

        with self.autocast():
            cache = self._enter(run_prefix)
            logits = self._enter(lambda: run_rest(cache))
        rest = forward_flops(self.shape, b, t, p + t, head_rows=b, full_len=p + t,
                             real_tokens=int(rest_mask.sum()) + b * p)
        pre = forward_flops(self.shape, 1, p, p, head_rows=0)
        both = FlopCount(nominal=rest.nominal, actual=rest.actual + pre.actual, forward_tokens=rest.forward_tokens)
        return self._count(logits, both)

    # ------------------------------------------------------------ prefix cache
    def prefix_cache(self, before: list[int] | tuple[int, ...]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Keys and values of the prompt before the attack, computed once per example."""
        if not before:
            return ()
        ids = torch.tensor([list(before)], device=self.device)
        cache = DynamicCache()
        with torch.no_grad(), self.autocast():
            self._enter(lambda: self.backbone(input_ids=ids, use_cache=True, **{self._cache_kw: cache}), "fwd")
        t = len(before)
        spent = forward_flops(self.shape, 1, t, t, head_rows=0)
        # Nominal FLOPs charge each candidate its whole sequence; the shared prefix is actual-only.
        self.meter.add(FlopCount(nominal=0, actual=spent.actual))
        return tuple((layer.keys, layer.values) for layer in cache.layers)

    @staticmethod
    def expand_cache(prefix: tuple, batch: int) -> DynamicCache | None:
        """A fresh cache object per call: forward appends to it, the stored prefix stays intact."""
        if not prefix:
            return None
        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in prefix])

    def logits_cached(self, prefix: tuple, tail_ids: torch.Tensor | None = None,
                      tail_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 2] for `prefix + tail` where every row shares the cached prefix."""

        def run() -> torch.Tensor:
            embeds = self.embedding(tail_ids) if tail_embeds is None else tail_embeds
            b = embeds.shape[0]
            prefix_len = prefix[0][0].shape[2] if prefix else 0
            cache = self.expand_cache(prefix, b)
            return self._logits_from_embeds(embeds, None, cache, prefix_len)

        return self._enter(run)
