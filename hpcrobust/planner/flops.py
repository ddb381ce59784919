"""Nominal and actual FLOPs of every kind of model call a sweep makes, counted as the run counts them.

Each function mirrors one counted call of the run and builds its count with the run's own
`models/flops.py` (`forward_flops`, `backward_flops`), so the conventions cannot drift apart:

    scoring        ScoringEngine.score_chunk: candidates in fixed chunks on top of the prefix cache
    prefix         ScoringEngine.prefix: the prompt before the attack, once per attacked example (actual only)
    gradient       gcg.token_gradient: one forward and a backward to the one-hot attack tokens
    batch          trainer.batch_logits: a (micro-)batch, with the shared instructions run once when long enough
    sampler_step   beast.Sampler.forward: the proposing LM on the new token of every beam

and then one function per attack type gives the cost of attacking one example, every iteration run (early
stopping only ever makes an attack cheaper, so this is what it costs with `early_stop: false`).
"""

from __future__ import annotations

from hpcrobust.attacks.config import AttackConfig
from hpcrobust.models.flops import ArchShape, FlopCount, backward_flops, forward_flops
from hpcrobust.training.trainer import MIN_SHARED_PREFIX


def times(c: FlopCount, n: int) -> FlopCount:
    return FlopCount(c.nominal * n, c.actual * n, c.forward_tokens * n, c.backward_tokens * n)


def total(parts: list[FlopCount]) -> FlopCount:
    out = FlopCount()
    for p in parts:
        out.add(p)
    return out


def scoring(a: ArchShape, n_cands: int, before: int, tail: int, chunk: int) -> FlopCount:
    """`n_cands` candidates of one example, `chunk` at a time; each runs `tail` tokens over the cached `before`."""
    full, rest = divmod(n_cands, chunk)
    out = FlopCount()
    for c, n in ((chunk, full), (rest, 1 if rest else 0)):
        if n:
            out.add(times(forward_flops(a, c, tail, before + tail, head_rows=c, full_len=before + tail), n))
    return out


def prefix(a: ArchShape, before: int) -> FlopCount:
    """The prefix cache: really computed, never charged nominally (every candidate is charged its whole sequence)."""
    if before <= 0:
        return FlopCount()
    return FlopCount(nominal=0, actual=forward_flops(a, 1, before, before, head_rows=0).actual)


def gradient(a: ArchShape, before: int, tail: int) -> FlopCount:
    """GCG's token gradient: the weights are frozen, so the backward's actual cost is one forward's."""
    fwd = forward_flops(a, 1, tail, before + tail, head_rows=1, full_len=before + tail)
    return total([fwd, backward_flops(fwd, a, weights_need_grad=False)])


def batch(a: ArchShape, lengths: list[float], shared: int, train: bool) -> FlopCount:
    """One batch of sequences of `lengths` whose rows share at most `shared` leading tokens (trainer.batch_logits)."""
    p = min(shared, min(lengths) - 1)
    return batches(a, len(lengths), sum(lengths), max(lengths), p, train)


def batches(a: ArchShape, b: int, real: float, longest: float, p: float, train: bool, count: int = 1) -> FlopCount:
    """`count` batches of `b` rows padded to `longest`, `real` tokens in all of them, the first `p` shared: when
    p >= MIN_SHARED_PREFIX the shared prefix runs once (batch 1) and the rest on top of its cache."""
    if p >= MIN_SHARED_PREFIX and b > 1:
        t = longest - p
        rest = forward_flops(a, b, t, p + t, head_rows=b, full_len=p + t, real_tokens=real)
        pre = forward_flops(a, 1, p, p, head_rows=0)
        fwd = FlopCount(nominal=rest.nominal, actual=count * (rest.actual + pre.actual), forward_tokens=real)
    else:
        one = forward_flops(a, b, longest, longest, head_rows=b, full_len=longest, real_tokens=real)
        fwd = FlopCount(nominal=one.nominal, actual=count * one.actual, forward_tokens=real)
    return total([fwd, backward_flops(fwd, a, weights_need_grad=True)]) if train else fwd


def sampler_step(s: ArchShape, beams: int, new: int, past: int) -> FlopCount:
    c = forward_flops(s, beams, new, past + new, head_rows=beams, full_len=past + new)
    return FlopCount(nominal=c.nominal, actual=c.actual)


# ---------------------------------------------------------------- one attacked example, every iteration

def gcg_example(a: AttackConfig, v: ArchShape, before: int, after: int, chunk: int, n_models: int = 1,
                kept: float | None = None) -> FlopCount:
    """Iteration 0 scores the initial string; each iteration is a gradient plus the `search_width` candidates
    that pass the decode-then-encode filter: `kept` full widths over all iterations (survival.py; all of them
    when not given, an upper bound). Ensemble: every size's proposals."""
    tail = a.n_attack_tokens + after
    kept = a.n_iterations if kept is None else kept
    width = scoring(v, a.params.search_width * n_models, before, tail, chunk)
    grads = times(gradient(v, before, tail), a.n_iterations)
    return total([prefix(v, before), scoring(v, 1, before, tail, chunk), grads, times(width, kept)])


def random_token_example(a: AttackConfig, v: ArchShape, before: int, after: int, chunk: int) -> FlopCount:
    """One candidate per iteration, `chunk` iterations per step; without a success every iteration is scored."""
    tail = a.n_attack_tokens + after
    full, rest = divmod(a.n_iterations, chunk)
    steps = times(scoring(v, chunk, before, tail, chunk), full)
    if rest:
        steps.add(scoring(v, rest, before, tail, chunk))
    return total([prefix(v, before), steps])


def beast_example(a: AttackConfig, v: ArchShape, before: int, after: int, chunk: int,
                  sampler: ArchShape | None) -> FlopCount:
    """Step 0: the sampler reads the prompt and k1 one-token beams are scored; step s: the sampler reads each
    beam's new token and k1·k2 candidates of s+1 tokens are scored."""
    k1, k2 = a.params.beam_width, a.params.branching
    prompt = max(before, 1)  # an empty prompt is replaced by one BOS token
    parts = [prefix(v, before)]
    for s in range(a.n_iterations):
        if sampler is not None:
            step = sampler_step(sampler, 1, prompt, 0) if s == 0 else sampler_step(sampler, k1, 1, prompt + s - 1)
            parts.append(step)
        parts.append(scoring(v, k1 if s == 0 else k1 * k2, before, s + 1 + after, chunk))
    return total(parts)


def example_cost(a: AttackConfig, v: ArchShape, before: int, after: int, chunk: int, sampler: ArchShape | None,
                 n_models: int = 1, kept: float | None = None) -> FlopCount | None:
    """Cost of one attacked example; None for an attack type the planner has no model of."""
    if a.type == "gcg":
        return gcg_example(a, v, before, after, chunk, n_models, kept)
    if a.type == "random_token":
        return random_token_example(a, v, before, after, chunk)
    if a.type == "beast":
        return beast_example(a, v, before, after, chunk, sampler)
    return None


def attack_examples(a: AttackConfig, v: ArchShape, befores, afters, chunk: int, sampler: ArchShape | None,
                    n_models: int = 1, kept: float | None = None) -> list[FlopCount] | None:
    """Per attacked example (the examples' own lengths), or None for an unknown attack type."""
    memo: dict[tuple[int, int], FlopCount | None] = {}
    out = []
    for b, f in zip(befores, afters, strict=True):
        key = (int(b), int(f))
        if key not in memo:
            memo[key] = example_cost(a, v, key[0], key[1], chunk, sampler, n_models, kept)
        if memo[key] is None:
            return None
        out.append(memo[key])
    return out
