"""Run under `mpiexec -n K` by tests/test_replicated.py: one group of K ranks, each holding the whole tiny model.

It checks `OrderedSum` against a sequential sum, then fine-tunes and attacks (GCG) the model, recording
every payload the ranks pickle through MPI meanwhile; rank 0 writes every number to an .npz file.

    python tests/replicated_driver.py OUT.npz
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcrobust.attacks.base import AttackEnv  # noqa: E402
from hpcrobust.attacks.evaluate import EvalSet, evaluate  # noqa: E402
from hpcrobust.config import AttackConfig, ModelConfig, TaskConfig, load_config  # noqa: E402
from hpcrobust.models.loading import load_classifier  # noqa: E402
from hpcrobust.parallel.comm import Comm, world  # noqa: E402
from hpcrobust.parallel.distributed import OrderedSum, make_groups, shutdown  # noqa: E402
from hpcrobust.tasks import load_task  # noqa: E402
from hpcrobust.tasks.placement import clean_ids  # noqa: E402
from hpcrobust.training.trainer import TrainSpec, train  # noqa: E402

TINY = Path(__file__).resolve().parent / "data" / "tiny.yaml"


def item(i: int, numel: int) -> torch.Tensor:
    """Item i: float32 values over many magnitudes, so that adding them in another order changes bits."""
    g = np.random.default_rng(1000 + i)
    return torch.from_numpy((g.standard_normal(numel) * 10.0 ** g.integers(-6, 6, numel)).astype(np.float32))


def check_ordered_sum(w: Comm) -> np.ndarray:
    """Per case: (bitwise equal to the sequential sum, bitwise equal to the reversed-order sum)."""
    out = []
    for n_items in (1, 2, 3, 5, 8):
        for sizes, bucket in (((1,), 1 << 24), ((7,), 1 << 24), ((1001,), 1 << 24), ((300, 5, 700, 1, 64), 512)):
            shapes = [torch.Size([n]) for n in sizes]
            summer = OrderedSum(w.tensors, n_items, shapes, bucket)
            for wave in range(summer.n_waves):
                i = wave * w.size + w.rank
                summer.add_wave(list(item(i, sum(sizes)).split(sizes)) if i < n_items else None)
            got = torch.cat(summer.total())
            seq = item(0, sum(sizes)).clone()
            for i in range(1, n_items):
                seq += item(i, sum(sizes))
            rev = item(n_items - 1, sum(sizes)).clone()
            for i in range(n_items - 2, -1, -1):
                rev += item(i, sum(sizes))
            out.append((torch.equal(got, seq), torch.equal(got, rev)))
    return np.array(out)


def recording(comm: Comm, log: list[tuple[int, bool]]) -> None:
    """Record the pickled size of every MPI payload, and whether it holds attack scores."""
    for name in ("allgather", "bcast", "gather"):
        inner = getattr(comm, name)

        def wrapped(obj, *a, inner=inner, **kw):
            blob = pickle.dumps(obj)
            log.append((len(blob), b"Scores" in blob))
            return inner(obj, *a, **kw)

        setattr(comm, name, wrapped)


def main() -> None:
    torch.set_num_threads(1)
    w = world()
    if w.size > 1:
        w.tensors = make_groups(w, [list(range(w.size))], torch.device("cpu"))
    out: dict[str, np.ndarray] = {}
    if w.size > 1:
        out["ordered_sum"] = check_ordered_sum(w)
    cfg = load_config(TINY)
    clf = load_classifier(ModelConfig(name_or_path="builtin:s"), cfg.family, torch.device("cpu"), seed=0)
    task = load_task(TaskConfig(name="password_match", n_train=96, n_val=12))
    log: list[tuple[int, bool]] = []
    recording(w, log)

    # fine-tuning: 3 steps of 24 examples in 4 micro-batches of 6 (2/2 or 2/1/1 micro-batches per rank)
    seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
    res = train(clf, seqs, [e.label for e in task.train], TrainSpec(0.75, 3e-3, 24, 6), w, 0, ("replicated",))
    out["train_loss"] = np.float64(res.mean_loss)
    out["train_payload_max"] = np.int64(max((n for n, _ in log), default=0))
    out["grad_bytes"] = np.int64(4 * sum(p.numel() for p in clf.model.parameters()))
    for k, v in clf.model.state_dict().items():
        out["w/" + k] = v.float().numpy()

    # GCG on 3 examples, 3 iterations, 20 candidates in chunks of 8: the scores are gathered every iteration
    log.clear()
    a = AttackConfig.from_data({"name": "gcg", "type": "gcg", "n_examples": 3, "n_iterations": 3,
                                "n_attack_tokens": 4, "search_width": 20, "topk": 16}, "attack")
    env = AttackEnv(0, "eval", "s__seed0", 0, clf, 8, cfg.family)
    r = evaluate(a, env, w, EvalSet(task.val, 8), np.array([e.label for e in task.val]))
    out["gcg_final_loss"], out["gcg_tokens"], out["gcg_asr"] = r.final_loss, np.stack(r.tokens), r.asr
    out["attack_payloads_with_scores"] = np.int64(sum(s for _, s in log))
    out["attack_payloads"] = np.int64(len(log))
    if w.rank == 0:
        np.savez(sys.argv[1], **out)
    if w.size > 1:
        shutdown()


if __name__ == "__main__":
    main()
