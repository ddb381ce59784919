"""Run under `mpiexec -n K` by tests/test_fsdp.py: one tiny model, sharded over the K ranks (K >= 2) or whole
(K = 1), fine-tuned, evaluated and attacked with GCG; rank 0 writes every number to an .npz file.

    python tests/fsdp_driver.py OUT.npz [--dtype bfloat16] [--size s]
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcrobust.attacks.base import AttackEnv  # noqa: E402
from hpcrobust.attacks.evaluate import EvalSet, evaluate  # noqa: E402
from hpcrobust.config import AttackConfig, ModelConfig, TaskConfig, load_config  # noqa: E402
from hpcrobust.models.loading import load_classifier  # noqa: E402
from hpcrobust.parallel.comm import world  # noqa: E402
from hpcrobust.parallel.distributed import make_groups, shutdown  # noqa: E402
from hpcrobust.parallel.sharding import full_weights, resident_bytes, shard_classifier  # noqa: E402
from hpcrobust.tasks import load_task  # noqa: E402
from hpcrobust.tasks.placement import clean_ids  # noqa: E402
from hpcrobust.training.trainer import TrainSpec, example_losses, make_optimizer, predict, train  # noqa: E402

TINY = Path(__file__).resolve().parent / "data" / "tiny.yaml"


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stuck test can be asked where it is
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", default="s")
    args = ap.parse_args()
    torch.set_num_threads(1)
    w = world()
    cfg = load_config(TINY)
    m = ModelConfig(name_or_path=f"builtin:{args.size}", torch_dtype=args.dtype)
    clf = load_classifier(m, cfg.family, torch.device("cpu"), seed=0)
    if w.size > 1:
        w.tensors = make_groups(w, [list(range(w.size))], torch.device("cpu"))  # as make_layout does for a group
        shard_classifier(clf, w.tensors, w)
    task = load_task(TaskConfig(name="password_match", n_train=96, n_val=12))
    out: dict[str, np.ndarray] = {}

    # as loaded: predictions, then GCG
    val = [clean_ids(clf.tokenizer, e) for e in task.val]
    out["margin0"] = predict(clf, val, 5, w)[1]
    # GCG against the model as loaded (before fine-tuning): 3 examples, 3 iterations, 20 candidates in chunks of 8
    a = AttackConfig.from_data({"name": "gcg", "type": "gcg", "n_examples": 3, "n_iterations": 3,
                                "n_attack_tokens": 4, "search_width": 20, "topk": 16}, "attack")
    env = AttackEnv(0, "eval", "s__seed0", 0, clf, 8, cfg.family)
    r = evaluate(a, env, w, EvalSet(task.val, 8), np.array([e.label for e in task.val]))  # attack all 3
    out["gcg_final_loss"] = r.final_loss
    out["gcg_tokens"] = np.stack(r.tokens)
    out["gcg_asr"] = r.asr
    out["gcg_flops"] = r.flops_nominal

    # fine-tuning: 3 steps of 24 examples in 4 micro-batches of 6 (ranks get 2/2, 2/1/1 micro-batches)
    seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
    labels = [e.label for e in task.train]
    res = train(clf, seqs, labels, TrainSpec(0.75, 3e-3, 24, 6), w, 0, ("fsdp-test",))
    out["train_loss"] = np.float64(res.mean_loss)
    out["train_flops"] = np.sum(w.allgather([res.flops.nominal, res.flops.actual]), axis=0, dtype=np.float64)
    weights = full_weights(clf) if w.size > 1 else {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
    if w.rank == 0:
        for k, v in weights.items():
            out["w/" + k] = v.float().numpy()

    # evaluation: 12 examples in batches of 5 (3 batches: 2/1 or 1/1/1 per rank)
    pred, margin = predict(clf, val, 5, w)
    out["pred"], out["margin"] = pred, margin
    out["val_losses"] = example_losses(clf, val, [e.label for e in task.val], 5, w)

    # memory at rest with AdamW states (a fresh optimizer, one step at learning rate 0 on a zero loss)
    params = list(clf.model.parameters())
    clf.set_trainable(True)
    opt = make_optimizer(params, TrainSpec(1, 0.0, 8, 8))
    (clf.logits(torch.tensor([[5, 6, 7]])).sum() * 0.0).backward()
    opt.step()
    out["param_bytes"], out["optim_bytes"] = np.array(resident_bytes(clf, opt))
    if w.rank == 0:
        np.savez(args.out, **out)
    # every rank reports its own resident bytes (rank 0's are in the file)
    sizes = w.allgather(int(out["param_bytes"]) + int(out["optim_bytes"]))
    if w.rank == 0:
        np.save(str(args.out) + ".ranks.npy", np.array(sizes))
    if w.size > 1:
        shutdown()


if __name__ == "__main__":
    main()
