"""Peak memory of one rank, for training and for attack scoring, from the architecture alone.

Training (trainer.train: fixed micro-batches, a fresh optimizer per call, gradients set to None each step):

    weights + optimizer state + max(activations, gradients + optimizer scratch)
    (+ gradients during the activations, when a rank runs more than one micro-batch per step)
    (+ autocast's low-precision copy of the weights during a bfloat16 forward/backward)

Weights, gradients and optimizer state are float32 whatever the compute dtype (models/precision.py);
activations, caches and a BEAST sampler's weights are in the compute dtype.

Attack scoring (ScoringEngine, no gradients):

    weights [+ BEAST sampler and its beam caches] + prefix caches (at most 64 examples per engine)
    + one chunk's key/value cache (the prefix expanded to the chunk, every layer) + one layer's working set

Activations per token follow the layer's own code, with coefficients fitted to memory profiles of
transformers' GPT-NeoX and Qwen2 layers on CPU (float32; tests/test_plan.py measures them again). Without
parallel.shard every rank of a group holds the whole model, the group only splits micro-batches and chunks;
with it (FSDP) a rank holds 1/k of the weights, gradients and optimizer state, plus the gathered units it is
computing with (parallel/sharding.py: a decoder layer, or the embeddings and head). With
models.N.gradient_checkpointing only each layer's input is kept; the plan shows both peaks and uses the one
the config asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcrobust.config import AttackConfig, SweepConfig
from hpcrobust.parallel.distributed import BUCKET_NUMEL
from hpcrobust.planner.arch import ModelArch
from hpcrobust.planner.tokens import TaskTokens
from hpcrobust.training.trainer import MIN_SHARED_PREFIX

GiB = 1024 ** 3
MASTER_BYTES = 4  # float32 master weights, gradients and optimizer state
MAX_CACHED_EXAMPLES = 64  # ScoringEngine's prefix caches per engine


@dataclass(frozen=True)
class LayerCoefficients:
    """Elements kept per token: for backward (per layer: act_h·h + act_i·i; once: top_h·h + top_i·i), and while
    scoring a chunk (kv_copies of the keys/values of one layer, plus work_h·h + work_i·i per new token)."""

    act_h: float
    act_i: float
    top_h: float
    top_i: float
    kv_copies: float
    kv_full_width: bool  # keys/values are repeated to every query head before attention (GQA models)
    work_h: float
    work_i: float


COEFFICIENTS = {
    "gpt_neox": LayerCoefficients(10, 2, 2, 0.75, 1, False, 3, 1),
    "qwen2": LayerCoefficients(9, 4, 0, 2.25, 2, True, 4.5, 0.25),
}
COEFFICIENTS["llama"] = COEFFICIENTS["mistral"] = COEFFICIENTS["qwen2"]
FALLBACK = LayerCoefficients(10, 4, 2, 2.25, 2, True, 4.5, 1)  # the larger of each, for other architectures


def coefficients(model_type: str) -> LayerCoefficients:
    return COEFFICIENTS.get(model_type, FALLBACK)


@dataclass
class MemoryPlan:
    """Bytes per rank (device memory unless said otherwise)."""

    weights: float
    gradients: float
    optimizer: float
    optimizer_scratch: float
    activations: float
    activations_checkpointed: float
    train_peak: float
    train_peak_checkpointed: float
    gradient_exchange: float  # OrderedSum's buffers while a group of whole copies sums a micro-batch's gradients
    sampler: float
    prefix_caches: float
    chunk: float
    scoring_peak: float
    scoring_what: str  # which call sets the scoring peak

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.scoring_peak)


def optimizer_bytes(m: ModelArch, optimizer: str) -> tuple[float, float]:
    """(state, scratch during a step): AdamW keeps two float32 moments; Adafactor keeps factored float32 second
    moments (rows + columns of each matrix) and works on one tensor at a time."""
    b = MASTER_BYTES
    if optimizer == "adafactor":
        state = 4 * (sum(r + c for r, c in m.matrix_dims) + m.vector_params)
        return state, 4 * 4 * m.largest_param
    return 2 * m.n_params * b, m.largest_param * b  # per-tensor scratch (foreach on CUDA: one more full copy)


def train_tokens(lengths, shared: int, micro: int) -> tuple[float, float]:
    """(tokens run with gradients, prefix run once) of the largest micro-batch (trainer.batch_logits)."""
    longest = float(max(lengths))
    p = min(shared, min(lengths) - 1)
    if p >= MIN_SHARED_PREFIX and micro > 1:
        return micro * (longest - p) + p, p
    return micro * longest, 0.0


def activations(m: ModelArch, tokens: float, prefix: float, micro: int) -> float:
    c = coefficients(m.model_type)
    layer = c.act_h * m.hidden + c.act_i * m.intermediate
    per_token = m.layers * layer + c.top_h * m.hidden + c.top_i * m.intermediate
    kv = m.hidden if c.kv_full_width else m.kv_hidden
    shared_kv = m.layers * 2 * micro * prefix * kv  # every row's attention keeps the shared prefix's keys/values
    return (tokens * per_token + shared_kv) * m.dtype_bytes


def checkpointed(m: ModelArch, tokens: float, prefix: float, micro: int) -> float:
    """With activation checkpointing per layer: each layer's input, plus one layer's activations at a time."""
    c = coefficients(m.model_type)
    one_layer = c.act_h * m.hidden + c.act_i * m.intermediate + c.top_h * m.hidden + c.top_i * m.intermediate
    return (tokens * (m.layers * m.hidden + one_layer) + 2 * micro * prefix * m.hidden) * m.dtype_bytes


def layer_work(m: ModelArch, c: int, keys: int, new: int) -> float:
    """One layer's working set without gradients: c rows of `new` tokens attending to `keys` keys."""
    k = coefficients(m.model_type)
    width = m.hidden if k.kv_full_width else m.kv_hidden
    per_new = k.work_h * m.hidden + k.work_i * m.intermediate
    return (c * keys * width * k.kv_copies + c * new * per_new) * m.dtype_bytes


def chunk_bytes(m: ModelArch, c: int, before: int, tail: int) -> float:
    """One scoring call: the prefix's keys/values expanded to c rows in every layer, plus one layer's work."""
    cache = m.layers * 2 * c * (before + tail) * m.kv_hidden * m.dtype_bytes
    return cache + layer_work(m, c, before + tail, tail)


def prefix_bytes(m: ModelArch, before: int) -> float:
    return m.layers * 2 * before * m.kv_hidden * m.dtype_bytes


def attack_scoring(m: ModelArch, a: AttackConfig, tt: TaskTokens, n_examples: int, chunk: int, group: int,
                   sampler: ModelArch | None, train: bool) -> tuple[float, float, float, float]:
    """(prefix caches, chunk, sampler weights + caches, GCG gradient) in bytes for one attack on one rank."""
    split = tt.train if train else tt.val
    before, after = split.around(a.placement, a.infix_fraction)
    n = min(n_examples, len(split))
    lb, la = (int(before.max()), int(after.max())) if train else (int(before[:n].max()), int(after[:n].max()))
    led = math.ceil(n / group)
    caches = min(MAX_CACHED_EXAMPLES, led) * prefix_bytes(m, lb)
    tail = a.n_attack_tokens + la
    width = {"beast": lambda: a.params.beam_width * a.params.branching, "gcg": lambda: a.params.search_width,
             }.get(a.type, lambda: a.n_iterations)()
    work = chunk_bytes(m, min(chunk, width), lb, tail)
    extra = 0.0
    if sampler is not None:
        k1 = a.params.beam_width
        per_example = sampler.layers * 2 * k1 * (max(lb, 1) + a.n_iterations) * sampler.kv_hidden * sampler.dtype_bytes
        extra = sampler.n_params * sampler.dtype_bytes + led * per_example
    grad = 0.0
    if a.type == "gcg":
        grad = 3 * a.n_attack_tokens * m.vocab * m.dtype_bytes + chunk_bytes(m, 1, lb, tail)
    return caches, work, extra, grad


def plan_memory(cfg: SweepConfig, m: ModelArch, tt: TaskTokens, sampler_of, on_cuda: bool, g: int) -> MemoryPlan:
    """The peak of one rank of a group of `g` holding model `m`; `sampler_of(attack)` gives BEAST's sampler
    ModelArch (or None)."""
    ft, adv, par = cfg.finetune, cfg.advtrain, cfg.parallel
    b = MASTER_BYTES
    weights = grads = m.n_params * b
    cast = m.n_params * m.dtype_bytes if m.dtype_bytes < b else 0.0  # autocast keeps the cast weights per step
    adversarial = adv.rounds > 0 and bool(cfg.train_attacks)
    opt_name = "adamw" if "adamw" in {ft.optimizer, adv.optimizer if adversarial else ft.optimizer} else "adafactor"
    opt, scratch = optimizer_bytes(m, opt_name)
    if on_cuda and opt_name == "adamw":
        scratch = m.n_params * b  # torch's foreach AdamW: one temporary per parameter at once
    lengths = tt.train.clean()
    if adversarial:  # adversarial rounds train on attacked sequences: clean + the attack
        ta = cfg.train_attack()
        lengths = lengths + (adv.iterations_end if ta.plugin.length_is_iterations else ta.n_attack_tokens)
    tokens, prefix = train_tokens(lengths, tt.train.lcp, ft.micro_batch_size)
    act = activations(m, tokens, prefix, ft.micro_batch_size)
    act_ck = checkpointed(m, tokens, prefix, ft.micro_batch_size)
    n_mb = ft.batch_size // ft.micro_batch_size
    # gradients stay allocated through a rank's later micro-batches; whole copies in a group hand each one to
    # OrderedSum instead, which adds a send and a receive bucket and 1/g of the sum (parallel/distributed.py)
    replicated = g > 1 and not par.shard
    several = math.ceil(n_mb / g) > 1 and not replicated
    bucket = min(m.n_params, max(m.largest_param, BUCKET_NUMEL))
    exchange = (m.n_params / g + 2 * bucket) * b if replicated else 0.0

    def peak(a: float) -> float:
        return weights + cast + opt + (grads + a if several else max(a, grads + scratch))

    if par.shard and g > 1:  # FSDP: own shards, plus the gathered root unit and a layer (and the next one)
        root = m.vocab * m.hidden + 2 * m.hidden  # embeddings and head (parallel/sharding.py)
        layer = max(m.n_params - root, 0) // max(m.layers, 1)
        weights = (m.n_params / g + root + 2 * layer) * b
        grads = (m.n_params / g + root + layer) * b
        opt, scratch = opt / g, scratch / g
    val = tt.val.clean()
    scoring = weights + layer_work(m, ft.eval_batch_size, int(val.max()), int(val.max()))  # no cache kept
    what, parts = "clean accuracy", (0.0, 0.0, scoring - weights)
    attacks = [(x, False) for x in cfg.attacks] + ([(cfg.train_attack(), True)] if adversarial else [])
    for a, train in attacks:
        n = adv.n_new_examples if train else a.n_examples
        caches, work, extra, grad = attack_scoring(m, a, tt, n, par.score_chunk, g, sampler_of(a), train)
        total = weights + extra + caches + max(work, grad)
        if total > scoring:
            scoring, what, parts = total, a.name, (extra, caches, max(work, grad))
    summing = weights + cast + opt + grads + exchange
    train = max(peak(act_ck) if m.checkpointing else peak(act), summing)
    return MemoryPlan(weights, grads, opt, scratch, act, act_ck, train, max(peak(act_ck), summing), exchange,
                      parts[0], parts[1],
                      parts[2], scoring, what)
