"""A sweep: every run (model size x seed) through every round, committed round by round.

Rounds are the outer loop. In round r every group works through its runs, then all ranks commit
round r together. A run's round starts from the checkpoint of its previous round, whether the
sweep was interrupted or not, so a resumed sweep stores exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hpcrobust import __version__
from hpcrobust.attacks.registry import evaluate_attack
from hpcrobust.config import ModelConfig, SweepConfig, model_label, science_hash, to_yaml
from hpcrobust.errors import RankFailure
from hpcrobust.log import log
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.flops import FlopCount
from hpcrobust.models.loading import count_parameters, load_classifier, save_classifier
from hpcrobust.parallel.collectives import broadcast_from_root
from hpcrobust.parallel.layout import Layout
from hpcrobust.phases import (
    RoundState,
    ensemble_phase,
    share_random_tokens,
    table_digest,
    transfer_phase,
)
from hpcrobust.preflight import RunSpec, plan_runs
from hpcrobust.store import reader, writer
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION, Record, round_path, run_path, text_array
from hpcrobust.tasks import TaskData
from hpcrobust.tasks.placement import clean_ids
from hpcrobust.training.adversarial import adversarial_round, equal_compute_rounds, scheduled_iterations
from hpcrobust.training.finetune import finetune_sequences
from hpcrobust.training.pool import Pool
from hpcrobust.training.trainer import TrainSpec, predict, train

POOL_FILE = "adversarial_pool.npz"
STATE_FILE = "hpcrobust_state.json"


@dataclass
class Sweep:
    cfg: SweepConfig
    layout: Layout
    task: TaskData
    out: Path

    def __post_init__(self) -> None:
        self.runs = plan_runs(self.cfg)
        if self.cfg.advtrain.equal_compute:
            sizes = [count_parameters(m, self.cfg.family) for m in self.cfg.models]
            self.equal_rounds = equal_compute_rounds(self.cfg.advtrain.rounds, sizes)
        self.ckpt_root = Path(str(self.out) + ".ckpt")
        self.header = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": __version__,
                       "config": to_yaml(self.cfg), "science_hash": science_hash(self.cfg)}

    # ------------------------------------------------------------ plan
    def n_rounds(self, run: RunSpec) -> int:
        m = self.cfg.models[run.model_index]
        if m.rounds >= 0:
            return m.rounds
        if self.cfg.advtrain.equal_compute:
            return self.equal_rounds[run.model_index]
        return self.cfg.advtrain.rounds

    def checkpoint_dir(self, run: RunSpec, r: int) -> Path:
        return self.ckpt_root / run.key / f"round_{r:04d}"

    # ------------------------------------------------------------ main loop
    def run(self) -> None:
        lay = self.layout
        done = broadcast_from_root(lay.world, reader.committed_rounds(self.out) if lay.is_root else None)
        total = sum(self.n_rounds(r) + 1 for r in self.runs)
        already = sum(len(done.get(r.key, ())) for r in self.runs)
        bar = None
        if lay.is_root:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=already, desc="sweep", unit="round", dynamic_ncols=True)
        max_round = max(self.n_rounds(r) for r in self.runs)
        for rnd in range(max_round + 1):
            active = [r for r in self.runs if rnd <= self.n_rounds(r)]
            if all(rnd in done.get(r.key, set()) for r in active):
                continue  # committed (with its transfer matrix) in an earlier attempt
            if self.cfg.debug.fail_rank == lay.world.rank and self.cfg.debug.fail_round == rnd:
                raise RankFailure(f"injected failure on rank {lay.world.rank} in round {rnd} (debug.fail_rank)")
            tables = share_random_tokens(self.cfg, lay, rnd)
            held = {i: self.run_round(self.runs[i], rnd, tables)
                    for i in lay.runs_of_group(len(self.runs)) if self.runs[i] in active}
            ensemble_phase(self.cfg, lay, rnd, active, held, self.task.val)
            transfer = transfer_phase(self.cfg, lay, rnd, active, held, self.task.val)
            mine = [self.record(st, rnd) for st in held.values()] if lay.is_group_leader else []
            n = writer.commit(lay.world, self.out, self.header, mine + ([transfer] if transfer else []))
            if bar is not None:
                bar.update(len(active))
            if n:
                log(f"round {rnd}: committed {len(active)} run(s) to {self.out}")
            if self.cfg.debug.stop_after_round == rnd:
                raise SystemExit(3)
        if bar is not None:
            bar.close()

    # ------------------------------------------------------------ one round of one run
    def load_model(self, run: RunSpec, rnd: int) -> Classifier:
        m = self.cfg.models[run.model_index]
        if rnd == 0:
            return load_classifier(m, self.cfg.family, self.layout.device, run.seed)
        prev = self.checkpoint_dir(run, rnd - 1)
        if not (prev / "config.json").is_file():
            raise RuntimeError(f"checkpoint of round {rnd - 1} for {run.key} is missing: {prev}")
        saved = replace(m, name_or_path=str(prev), label=model_label(m))
        return load_classifier(saved, self.cfg.family, self.layout.device, run.seed)

    def group_flops(self, spent: FlopCount) -> FlopCount:
        total = FlopCount()
        for part in self.layout.group.allgather(spent):
            total.add(part)
        return total

    def run_round(self, run: RunSpec, rnd: int, tables: dict) -> RoundState:
        """Train (or fine-tune) and evaluate one run for one round, on the ranks of its group."""
        t0 = time.time()
        lay = self.layout
        m = self.cfg.models[run.model_index]
        clf = self.load_model(run, rnd)
        if rnd == 0:
            pool, scalars = Pool(), self._finetune(clf, run, m)
        else:
            prev = self.checkpoint_dir(run, rnd - 1)
            pool = Pool.load(prev / POOL_FILE)
            prev_cum = json.loads((prev / STATE_FILE).read_text())["defense_flops_cum"]
            scalars = self._adversarial(clf, run, m, rnd, pool, prev_cum)
        pred, acc = self._clean_accuracy(clf)
        scalars["clean_accuracy"] = acc
        log(f"{run.key} round {rnd}: clean accuracy {acc:.3f} train loss {scalars['train_loss']:.3f}"
            f" ({time.time() - t0:.1f}s)", all_ranks=lay.is_group_leader)
        labels = np.array([e.label for e in self.task.val])
        state = RoundState(run, clf, pred == labels, scalars)
        for a in self.cfg.attacks:
            if a.ensemble:
                continue  # run with every size at once, in the ensemble phase
            table = tables.get((run.seed, a.name))
            res = evaluate_attack(a, clf, lay.group, run.seed, run.key, rnd, self.task.val, pred,
                                  self.cfg.parallel.score_chunk, self.cfg.family, self.cfg.task.max_content_tokens,
                                  rt_table=table)
            state.add(res)
            if a.type == "random_token":
                shared = table is not None
                state.arrays[f"attacks/{a.name}/shared_candidates"] = np.int64(shared)
                state.arrays[f"attacks/{a.name}/candidates_sha256"] = text_array(
                    [table_digest(table) if shared else ""])
            log(f"{run.key} round {rnd}: {a.name} ASR {res.asr[-1]:.3f} after {len(res.asr) - 1} iterations"
                f" ({res.wall_time:.1f}s)", all_ranks=lay.is_group_leader)
        if lay.is_group_leader:
            self.save_checkpoint(clf, run, rnd, pool, scalars["defense_flops_cum"])
        scalars.update(wall_time=lay.group.allreduce_max(time.time() - t0), n_params=clf.n_params,
                       pretrain_flops=float(clf.pretrain_flops))
        return state

    def record(self, st: RoundState, rnd: int) -> Record:
        run, m = st.run, self.cfg.models[st.run.model_index]
        return Record(path=round_path(run.key, rnd), attrs={"round": rnd}, scalars=st.scalars, arrays=st.arrays,
                      parent_attrs={run_path(run.key): {
                          "model": m.name_or_path, "model_label": model_label(m), "seed": run.seed,
                          "task": self.cfg.task.name, "run_index": run.index, "rounds": self.n_rounds(run)}})

    def _finetune(self, clf: Classifier, run: RunSpec, m: ModelConfig) -> dict[str, float]:
        ft = self.cfg.finetune
        start = clf.meter.total.snapshot()
        spec = TrainSpec(ft.epochs, ft.lr * m.lr_scale, ft.batch_size, ft.micro_batch_size, ft.warmup_frac,
                         ft.schedule, ft.optimizer, ft.weight_decay)
        n_random = m.random_token_defense if m.random_token_defense >= 0 else ft.random_token_defense
        seqs = finetune_sequences(clf, self.task, self.cfg.task.max_content_tokens, n_random, run.seed, run.key)
        res = train(clf, seqs, [e.label for e in self.task.train], spec, self.layout.group, run.seed,
                    (run.key, "finetune"))
        spent = self.group_flops(clf.meter.total.since(start))
        return {"train_loss": res.mean_loss, "flops_nominal": spent.nominal, "flops_actual": spent.actual,
                "finetune_flops": spent.nominal, "defense_flops": 0, "defense_flops_cum": 0,
                "train_attack_iterations": 0, "train_attack_success": float("nan"), "n_adversarial": 0,
                "n_clean": len(seqs)}

    def _adversarial(self, clf: Classifier, run: RunSpec, m: ModelConfig, rnd: int, pool: Pool,
                     prev_cum: int) -> dict[str, float]:
        scale = m.adv_lr_scale if m.adv_lr_scale >= 0 else m.lr_scale
        out = adversarial_round(clf, self.cfg, self.task, pool, run.key, run.seed, rnd, scale,
                                self.layout.group)
        spent = self.group_flops(out.train_flops)
        defense = out.attack_flops.nominal + spent.nominal
        return {"train_loss": out.train_loss, "flops_nominal": spent.nominal, "flops_actual": spent.actual,
                "finetune_flops": 0, "defense_flops": defense, "defense_flops_cum": prev_cum + defense,
                "train_attack_iterations": scheduled_iterations(self.cfg, rnd),
                "train_attack_success": out.attack_success, "n_adversarial": out.n_adversarial,
                "n_clean": out.n_clean}

    def _clean_accuracy(self, clf: Classifier) -> tuple[np.ndarray, float]:
        val = [clean_ids(clf.tokenizer, e, self.cfg.task.max_content_tokens) for e in self.task.val]
        pred, _ = predict(clf, val, self.cfg.finetune.eval_batch_size, self.layout.group)
        labels = np.array([e.label for e in self.task.val])
        return pred, float((pred == labels).mean())

    def save_checkpoint(self, clf: Classifier, run: RunSpec, rnd: int, pool: Pool, defense_cum: int) -> None:
        """Model, adversarial pool and cumulative defense compute: all a later round needs to resume."""
        final = self.checkpoint_dir(run, rnd)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_classifier(clf, tmp)
        pool.save(tmp / POOL_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"defense_flops_cum": int(defense_cum)}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
