"""`hpcrobust plan` against what the run really does: FLOPs per phase, wall time after calibration, peak memory,
the paper configs without any model files, and the same one-line errors as `run`."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.config import load_config
from tests.conftest import DATA, ROOT, run_cli

PLAN_CHECK = DATA / "plan_check.yaml"
# A different sweep of the same sizes (same fine-tuning, so the same round-0 models): other attack budgets, fewer
# and larger adversarial rounds.
SWEEP_B = ["output=b.h5", "attacks.0.n_iterations=5", "attacks.0.search_width=32", "attacks.1.n_examples=4",
           "attacks.2.n_iterations=32", "attacks.3.n_examples=6", "attacks.3.n_iterations=4",
           "attacks.3.n_attack_tokens=4", "advtrain.rounds=2", "advtrain.n_new_examples=12",
           "advtrain.max_examples=96", "advtrain.iterations_end=4"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, family_cache) -> Path:
    """The plan-check sweep (A) and the second sweep (B), run once for this module."""
    d = tmp_path_factory.mktemp("plan")
    (d / "plan_check.yaml").write_text(PLAN_CHECK.read_text())
    for extra in ([], SWEEP_B):
        proc = run_cli(["run", "plan_check.yaml", "--quiet", *extra], cwd=d)
        assert proc.returncode == 0, proc.stderr
    return d


def _phases(cfg, path: Path) -> list[tuple[str, int, str, float, float]]:
    """(run, round, phase, planned nominal, recorded nominal) for every phase the results file records."""
    from hpcrobust.planner.build import run_plan_of

    out = []
    with h5py.File(path) as f:
        for key in f["runs"]:
            rp = run_plan_of(cfg, key)
            for rr in rp.rounds:
                g = f[f"runs/{key}/rounds/{rr.round:04d}"]
                name = "finetune_flops" if rr.round == 0 else "defense_flops"
                out.append((key, rr.round, name, rr.nominal(name), float(g[name][()])))
                for a in cfg.attacks:
                    ag = g[f"attacks/{a.name}"]
                    per = rr.phase(f"attack {a.name}").per_example
                    planned = sum(c.nominal for c, ok in zip(per, ag["correct_before"][()], strict=True) if ok)
                    out.append((key, rr.round, a.name, planned, float(ag["flops_nominal"][()].sum())))
    return out


def test_planned_flops_equal_the_recorded_ones_per_phase(sweeps):
    """Early stopping off (RandomToken within one chunk cannot stop early): every phase of every run and round
    within 2%. Evaluation attacks are compared on the examples the model classified correctly (the plan's
    per-example costs summed over those), since which ones those are is not known before the run."""
    from hpcrobust.config import load_config

    rows = _phases(load_config(sweeps / "plan_check.yaml"), sweeps / "out.h5")
    assert len(rows) == 2 * 4 * 5
    worst = max(rows, key=lambda r: abs(r[3] / r[4] - 1))
    assert all(r[4] > 0 for r in rows)
    assert abs(worst[3] / worst[4] - 1) < 0.02, worst


def _recorded_seconds(path: Path) -> float:
    with h5py.File(path) as f:
        return sum(float(f[f"runs/{k}/rounds/{r}/wall_time"][()]) for k in f["runs"] for r in f[f"runs/{k}/rounds"])


def test_calibrated_wall_time_predicts_a_second_sweep(sweeps):
    """Utilisation (and start-up, and accuracy) measured on sweep A predict sweep B's time within 25%: the sum of
    its rounds' recorded wall times, against the plan's job time less the transfer matrices (which the run does
    between rounds, outside the recorded wall_time)."""
    proc = run_cli(["plan", "plan_check.yaml", *SWEEP_B, "--calibrate", "out.h5", "--json"], cwd=sweeps)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert len(plan["jobs"]) == 1 and plan["jobs"][0]["groups"] == 1
    transfer = sum(s["transfer_s"] * s["n_runs"] for s in plan["sizes"])
    predicted, measured = plan["jobs"][0]["wall_s"] - transfer, _recorded_seconds(sweeps / "b.h5")
    print(f"planned {predicted:.2f} s, measured {measured:.2f} s")
    assert abs(predicted / measured - 1) < 0.25, (predicted, measured)
    kinds = set(plan["calibration"]["points"])
    assert {"train", "attack:gcg", "attack:random_token", "attack:beast"} <= kinds
    alone = run_cli(["plan", "--calibrate", "out.h5"], cwd=sweeps)
    assert alone.returncode == 0 and "attack:gcg" in alone.stdout, alone.stderr


def test_memory_agrees_with_measured_peaks_for_three_sizes(tmp_path, family_cache):
    """Training and GCG / RandomToken scoring, three GPT-NeoX sizes, measured with torch's memory profiler."""
    import torch

    from hpcrobust.config import config_from_dict
    from hpcrobust.models.family import size_dir
    from tests import plan_measure as PM

    base = config_from_dict({"family": {"vocab_size": 400, "corpus_lines": 3000, "pretrain_steps": 30}})
    tok = size_dir(base.family, "s")
    models = [{"name_or_path": str(PM.save_random_model(tmp_path / n, tok, *shape))} for n, shape in PM.SIZES.items()]
    cfg = config_from_dict({
        "task": {"name": "password_match", "n_train": 128, "n_val": 8}, "models": models,
        "finetune": {"batch_size": 16, "micro_batch_size": 8, "eval_batch_size": 8},
        "parallel": {"score_chunk": 32, "threads_per_rank": 1},
        "attacks": [{"name": "gcg", "type": "gcg", "n_examples": 2, "n_iterations": 1, "n_attack_tokens": 6,
                     "search_width": 64, "topk": 32, "early_stop": False},
                    {"name": "rt", "type": "random_token", "n_examples": 2, "n_iterations": 32, "n_attack_tokens": 6}]})
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    report = []
    for i in range(len(models)):
        for j in range(len(cfg.attacks)):
            want_train, want_scoring = PM.planned(cfg, i, j, on_cuda=False)
            got_scoring = PM.measured_attack(cfg, i, j, cpu)
            report.append((i, cfg.attacks[j].name, want_scoring, got_scoring))
            if j == 0:
                report.append((i, "training", want_train, PM.measured_training(cfg, i, cpu)))
    for i, what, want, got in report:
        print(f"size {i} {what}: planned {want / 2**20:.2f} MiB, measured {got / 2**20:.2f} MiB")
    for i, what, want, got in report:
        assert abs(want / got - 1) < 0.25, (i, what, want, got)


def _child_cpu_seconds(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), time.time() - t0


PROBE = ("import sys; from hpcrobust.cli import main; rc = main(['plan', {cfg!r}, '--json']);"
         " loaded = sorted(m for m in sys.modules if m.startswith('transformers.models.') and '.modeling_' in m"
         " and '.auto.' not in m); print('MODELING', loaded, file=sys.stderr);"
         " sys.exit(rc)")


@pytest.mark.parametrize("config", ["paper_pythia.yaml", "paper_qwen.yaml"])
def test_paper_configs_plan_in_seconds_without_any_model(config):
    """No weights or config files exist here: shapes come from the table, token counts are estimated, no modeling
    code is even imported. The process (interpreter start, imports, planning) uses under 10 s of CPU; its wall
    time is printed (it is longer only when other processes share the cores)."""
    proc, cpu_s, wall_s = _child_cpu_seconds([sys.executable, "-c", PROBE.format(cfg=f"configs/{config}")])
    print(f"{config}: {cpu_s:.1f} s CPU, {wall_s:.1f} s wall")
    assert proc.returncode == 0, proc.stderr
    assert "MODELING []" in proc.stderr
    plan = json.loads(proc.stdout)
    assert cpu_s < 10
    assert plan["totals"]["device_hours"] > 100 and plan["totals"]["nominal_flops"] > 1e20
    assert all(s["source"].startswith("table of known shapes") for s in plan["sizes"])
    assert any("characters/4" in t for t in plan["tokens"])
    md = run_cli(["plan", f"configs/{config}", "--gpu", "a100"], cwd=ROOT)
    assert md.returncode == 0 and "**Total:" in md.stdout and "A100" in md.stdout


def test_warnings_name_the_fix(tmp_path):
    pythia = ROOT / "configs" / "paper_pythia.yaml"
    # bfloat16 with AdamW (the config is the reference's float32 Adafactor): the fix names Adafactor
    adamw = ["finetune.optimizer=adamw", "advtrain.optimizer=adamw", "models.9.torch_dtype=bfloat16"]
    plan = json.loads(run_cli(["plan", str(pythia), "--json", "--gpu", "h100", "launch.timeout_min=30", *adamw],
                              cwd=tmp_path).stdout)
    text = "\n".join(plan["warnings"])
    assert "pythia-12b does not fit" in text and "adafactor" in text  # AdamW state alone is 43 GiB
    assert "longer than the time limit" in text and "parallel.ranks_per_group" in text
    fp32 = json.loads(run_cli(["plan", str(pythia), "--json", "--gpu", "h100"], cwd=tmp_path).stdout)
    text = "\n".join(fp32["warnings"])  # already Adafactor: float32 weights and gradients are what is left, and
    # bfloat16 compute keeps them float32 (master weights, models/precision.py), so it is not offered as a fix
    assert "pythia-12b does not fit" in text and "optimizer adafactor" not in text
    assert "torch_dtype bfloat16" not in text and "sharding the model" in text
    big = json.loads(run_cli(["plan", str(pythia), "--json", "--gpu", "h200"], cwd=tmp_path).stdout)
    assert not any("does not fit" in w for w in big["warnings"])
    idle = json.loads(run_cli(["plan", str(pythia), "--json", "launch.array_over=seeds", "launch.tasks_per_node=16",
                               "launch.gpus_per_node=16"], cwd=tmp_path).stdout)
    assert len(idle["jobs"]) == len(load_config(pythia).seeds) and any("get no run" in w for w in idle["warnings"])


def test_the_queue_plan_is_shorter_and_warns_about_one_rank_holding_an_ensemble(tmp_path):
    """The paper's Pythia sweep on 8 H100s: the queue's simulated wall is below the barrier's and keeps every GPU
    busy; with an ensemble the queue holds every size of a seed on one rank, which does not fit."""
    pythia = ROOT / "configs" / "paper_pythia.yaml"
    plans = {s: json.loads(run_cli(["plan", str(pythia), "--json", "--gpu", "h100", "attacks.0.ensemble=true",
                                    f"parallel.schedule={s}"], cwd=tmp_path).stdout) for s in ("queue", "rounds")}
    queue, rounds = plans["queue"]["jobs"][0], plans["rounds"]["jobs"][0]
    assert queue["wall_s"] < 0.8 * rounds["wall_s"] and queue["busy_hours"] == pytest.approx(rounds["busy_hours"])
    assert queue["device_hours"] == pytest.approx(queue["busy_hours"], rel=0.01)
    held = [w for w in plans["queue"]["warnings"] if "one rank holds every size of a seed" in w]
    assert len(held) == 1 and "parallel.schedule=rounds" in held[0]
    assert not any("one rank holds" in w for w in plans["rounds"]["warnings"])


@pytest.mark.parametrize("override", [
    ["finetune.lrr=1"], ["finetune.epochs=abc"], ["task.name=spam", "task.path=nowhere.jsonl"],
    ["models.0.name_or_path=./no/such/model"], ["attacks.1.topk=100000"], ["attacks.0.type=nosuch"],
    ["advtrain.rounds=1", "advtrain.attack=nosuch"], ["models.0.name_or_path=nosuch/model-7b"],
])
def test_bad_configs_give_runs_error_line(tiny, override):
    """The same line as `run`, exit 2, no traceback."""
    lines = []
    for cmd in ("run", "plan"):
        proc = run_cli([cmd, str(tiny), *override], cwd=tiny.parent)
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
        lines.append(err[0])
    assert lines[0] == lines[1]


@pytest.mark.parametrize("args,needle", [
    (["--gpu", "nosuch"], "--gpu: unknown GPU"), (["--utilisation", "2"], "--utilisation"),
    (["--accuracy", "-1"], "--accuracy"), (["--device-memory", "80"], "--device-memory needs --device-flops"),
    (["--calibrate", "missing.h5"], "results file not found"), (["--device-flops", "0"], "--device-flops"),
])
def test_bad_plan_arguments_are_one_line(tiny, args, needle):
    proc = run_cli(["plan", str(tiny), *args], cwd=tiny.parent)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(err) == 1 and needle in err[0], proc.stderr
    nothing = run_cli(["plan"], cwd=tiny.parent)
    assert nothing.returncode == 2 and "give a CONFIG" in nothing.stderr


def test_known_shapes_count_what_the_meta_model_counts():
    """The written-out parameter lists equal meta-device models for every table entry and built-in size."""
    from hpcrobust.models import family
    from hpcrobust.models.config import FamilyConfig
    from hpcrobust.planner import arch as A

    cfgs = [A.hf_config_from_shape(s) for s in A.KNOWN_SHAPES.values()]
    cfgs += [A.builtin_hf_config(FamilyConfig(), s)[0] for s in family.SIZES]
    for cfg in cfgs:
        for lm in (False, True):
            shape, params = A._from_shapes(cfg, *A.parameter_shapes(cfg, lm), lm)
            meta_shape, meta_params = A._from_meta(cfg, lm, False)
            assert shape == meta_shape and sorted(params) == sorted(meta_params), (cfg, lm)
    pythia = A.known_shape("EleutherAI/pythia-12b")
    assert pythia is not None and A.known_shape("Qwen/Qwen2.5-7B-Instruct") is not None
    assert np.isclose(A._from_shapes(A.hf_config_from_shape(pythia), *A.parameter_shapes(
        A.hf_config_from_shape(pythia), True), True)[0].n_params, 11.85e9, rtol=0.01)  # Pythia-12B's published size
