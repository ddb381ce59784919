"""Chosen evaluation rounds (`attacks.N.rounds`): parsing and one-line errors, the log spacing, the plan, and a real
sweep whose file holds each attack only in its rounds, resumed and rerun on 2 ranks, then analysed; its provenance
(every round's hosts, devices and device-hours, and each attempt) is read back from the same files."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from hpcrobust.attacks.rounds import log_spaced
from hpcrobust.config import config_from_dict, load_config, science_hash, to_dict
from hpcrobust.errors import UserError
from hpcrobust.store import schema as S
from hpcrobust.store.identity import science_hash_of
from hpcrobust.store.reader import load, load_attacks, load_attempts, load_transfer
from hpcrobust.sweep.plan import SweepPlan
from tests.conftest import ROOT, TINY, run_cli
from tests.h5compare import assert_same

ADV = ["seeds=[0]", "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]",
       "advtrain.rounds=3", "advtrain.attack=rt_train", "advtrain.n_new_examples=12", "advtrain.max_examples=48",
       "advtrain.iterations_start=4", "advtrain.iterations_end=12", "advtrain.lr=1e-3"]
# xs has rounds 0..3, s only 0..1. rt runs in rounds 0 and 2 (s has no round 2), gcg in log:3 (xs: 0 1 3; s, with
# fewer rounds than K: 0 1), the ensemble only in round 1, on both sizes.
PICKED = [*ADV, "models.1.rounds=1",
          "attacks=[{name: rt, type: random_token, n_examples: 6, n_iterations: 40, n_attack_tokens: 5,"
          " rounds: [0, 2]}, {name: gcg, type: gcg, n_examples: 4, n_iterations: 3, n_attack_tokens: 4,"
          " search_width: 24, topk: 32, rounds: 'log:3'}, {name: ens, type: gcg, ensemble: true, n_examples: 3,"
          " n_iterations: 2, n_attack_tokens: 3, search_width: 8, topk: 16, rounds: [1]}]"]
EXPECTED = {"xs__seed0": {"rt": {0, 2}, "gcg": {0, 1, 3}, "ens": {1}},
            "s__seed0": {"rt": {0}, "gcg": {0, 1}, "ens": {1}}}
LAST = {"xs__seed0": 3, "s__seed0": 1}


def _cfg(attack: dict, *over: str):
    return config_from_dict({"attacks": [{"name": "a", "type": "random_token", **attack}]},
                            ["advtrain.rounds=10", "train_attacks=[{name: t, type: random_token}]",
                             "advtrain.attack=t", *over], source="cfg.yaml")


# ---------------------------------------------------------------- the selection itself

def test_log_spacing_matches_the_papers_rounds():
    assert log_spaced(10, 60) == (0, 1, 2, 3, 5, 8, 14, 23, 37, 60)
    assert log_spaced(4, 999) == (0, 9, 99, 999)  # exact decades of round + 1
    assert log_spaced(2, 7) == (0, 7)
    assert log_spaced(5, 3) == (0, 1, 2, 3) and log_spaced(4, 3) == (0, 1, 2, 3)  # K > last: every round
    assert log_spaced(3, 0) == (0,)
    for k in range(2, 15):
        for last in range(0, 80):
            got = log_spaced(k, last)
            assert len(got) == min(k, last + 1) and got[0] == 0 and got[-1] == last, (k, last)
            assert all(a < b for a, b in zip(got, got[1:], strict=False)), (k, last)


def test_forms_parse_and_store_as_written():
    assert to_dict(_cfg({}))["attacks"][0]["rounds"] == "all"
    assert _cfg({}).attacks[0].rounds.select(3) == [0, 1, 2, 3]
    listed = _cfg({"rounds": [5, 0, 2]}).attacks[0].rounds
    assert listed.select(10) == [0, 2, 5] and listed.select(3) == [0, 2] and listed.to_data() == [0, 2, 5]
    assert _cfg({"rounds": "log:4"}).attacks[0].rounds.select(999) == [0, 9, 99, 999]
    over = _cfg({}, "attacks.0.rounds=log:3").attacks[0].rounds  # the command-line form
    assert over.to_data() == "log:3" and over.evaluates(3, 3) and not over.evaluates(2, 3)
    again = config_from_dict(to_dict(_cfg({"rounds": "log:4"})))  # the stored config reads back the same
    assert again.attacks[0].rounds == _cfg({"rounds": "log:4"}).attacks[0].rounds


def test_identity_is_unchanged_at_the_default_and_changes_otherwise():
    base = _cfg({})
    data = to_dict(base)
    without = {**data, "attacks": [{k: v for k, v in a.items() if k != "rounds"} for a in data["attacks"]]}
    assert science_hash(base) == science_hash_of(without)  # files written before the key keep their identity
    assert science_hash(_cfg({"rounds": [0, 2]})) != science_hash(base)
    assert science_hash(_cfg({"rounds": "log:3"})) != science_hash(_cfg({"rounds": "log:4"}))


@pytest.mark.parametrize("value,needle", [
    ([], "attacks.0.rounds: an empty list evaluates nothing"),
    ([0, -1], "attacks.0.rounds.1: -1: rounds are numbered from 0"),
    ([0, 2, 2], "attacks.0.rounds: round 2 repeats"),
    ([0, "two"], "attacks.0.rounds.1: 'two' is not a round number"),
    ([0, 1.5], "attacks.0.rounds.1: 1.5 is not a round number"),
    ([True], "attacks.0.rounds.0: True is not a round number"),
    ([0, 11], "attacks.0.rounds: round 11 comes after the last round of every run (10"),
    ("log:0", "log:K needs K >= 2"),
    ("log:1", "log:K needs K >= 2"),
    ("log:x", "K of log:K must be a whole number"),
    ("log:-3", "K of log:K must be a whole number"),
    ("every", "attacks.0.rounds: 'every' is not a list of rounds"),
    (5, "attacks.0.rounds: 5 is not a list of rounds"),
    ({"a": 1}, "is not a list of rounds"),
])
def test_bad_rounds_are_one_line(value, needle):
    with pytest.raises(UserError) as e:
        _cfg({"rounds": value})
    msg = str(e.value)
    assert needle in msg and msg.startswith("cfg.yaml:") and "\n" not in msg


def test_a_training_attack_has_no_rounds_key():
    with pytest.raises(UserError, match="train_attacks.0.rounds: a training attack runs in every adversarial round"):
        config_from_dict({}, ["advtrain.rounds=2", "advtrain.attack=t",
                              "train_attacks=[{name: t, type: random_token, rounds: [0]}]"])
    cfg = config_from_dict({}, ["advtrain.rounds=2", "advtrain.attack=t", "train_attacks=[{name: t}]"])
    assert "rounds" not in to_dict(cfg)["train_attacks"][0]


def test_the_limit_follows_the_sizes_own_rounds():
    ok = _cfg({"rounds": [0, 12]}, "advtrain.rounds=12", "models=[builtin:xs, builtin:s]", "models.1.rounds=4")
    plan = SweepPlan(ok)
    xs, s = plan.runs
    assert [r for r in range(13) if plan.evaluates(ok.attacks[0], xs, r)] == [0, 12]
    assert [r for r in range(13) if plan.evaluates(ok.attacks[0], s, r)] == [0]  # 12 is after s's last round
    with pytest.raises(UserError, match="round 5 comes after the last round of every run"):
        _cfg({"rounds": [5]}, "advtrain.rounds=4", "models=[builtin:xs]")


def test_the_plan_counts_only_the_evaluated_rounds(family_cache):
    from hpcrobust.planner.build import run_plan_of

    cfg = load_config(TINY, [*PICKED, "attacks.1.rounds=all"])
    xs = run_plan_of(cfg, "xs__seed0")
    names = [{p.name for p in rr.phases} for rr in xs.rounds]
    assert len(names) == 4
    assert [r for r, n in enumerate(names) if "attack rt" in n] == [0, 2]
    assert [r for r, n in enumerate(names) if "transfer rt" in n] == [0, 2]
    assert [r for r, n in enumerate(names) if "attack ens" in n] == [1]
    assert all("attack gcg" in n and "transfer gcg" in n for n in names)
    # a round's transfer phase scores the strings of the runs evaluated then: both sizes in round 0, xs alone in 2
    assert 0 < xs.rounds[2].phase("transfer rt").flops.nominal < xs.rounds[0].phase("transfer rt").flops.nominal
    assert xs.rounds[0].phase("attack rt").flops.nominal == xs.rounds[2].phase("attack rt").flops.nominal > 0
    s = run_plan_of(cfg, "s__seed0")
    assert [r for r, rr in enumerate(s.rounds) if any(p.name == "attack rt" for p in rr.phases)] == [0]


def test_analysis_of_attacks_that_skip_rounds(tmp_path):
    """A synthetic file (three sizes, two seeds, rounds 0..4) whose GCG ran in rounds 0, 2 and 4 only: every figure,
    table and export is made, and an attack's rows are exactly its rounds."""
    from hpcrobust.analysis import load as load_all
    from hpcrobust.analysis.report import analyze
    from hpcrobust.analysis.synthetic import SynthAttack, SynthSpec, write_synthetic
    from hpcrobust.analysis.tidy import export

    spec = SynthSpec(rounds=4, attacks=[SynthAttack("gcg", rounds=[0, 2, 4]), SynthAttack("rt", "random_token", 32)])
    path = write_synthetic(tmp_path / "picked.h5", spec)
    res = load_all(path)
    assert set(res.attacks.loc[res.attacks.attack == "gcg", "round"]) == {0, 2, 4}
    assert set(res.attacks.loc[res.attacks.attack == "rt", "round"]) == set(range(5))
    assert set(res.transfer.loc[res.transfer.attack == "gcg", "round"]) == {0, 2, 4}
    assert res.attacks["asr"].notna().all() and len(res.rounds) == 3 * 2 * 5
    rep = analyze([path], tmp_path / "rep", n_boot=50)
    assert len(rep.figures) == 9
    for name in ("fig3_advtrain_rounds", "fig4_asr_vs_size_by_round", "fig3b_advtrain_defense_flops"):
        df = pd.read_csv(tmp_path / "rep" / f"{name}.csv")
        assert set(df.loc[df.attack == "gcg", "round"]) <= {0, 2, 4} and df["asr_median"].notna().all(), name
    off = pd.read_csv(tmp_path / "rep" / "fig5_offense_defense.csv")
    assert set(off.loc[off.attack == "gcg", "round"]) == {0, 2, 4}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| gcg | gcg | suffix | 10 | False | 0 2 4 |" in md  # the attack table says which rounds
    assert "No device-hours recorded" in md  # this writer records no provenance: said, not invented
    done = export([path], tmp_path / "exp", fmt="csv")
    assert done.files["attacks"][1] == 3 * 2 * (3 + 5) and done.files["attempts"][1] == 0


# ---------------------------------------------------------------- a real sweep

@pytest.fixture(scope="module")
def picked(tmp_path_factory, family_cache) -> Path:
    """The sweep of PICKED: stopped after round 1 and resumed (two attempts, one rank), and once on 2 ranks."""
    d = tmp_path_factory.mktemp("rounds")
    (d / "tiny.yaml").write_text(TINY.read_text())
    stopped = run_cli(["run", "tiny.yaml", *PICKED, "debug.stop_after_round=1", "--quiet"], cwd=d)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    rest = run_cli(["run", "tiny.yaml", *PICKED, "--quiet"], cwd=d)
    assert rest.returncode == 0, rest.stderr[-3000:]
    two = run_cli(["run", "tiny.yaml", *PICKED, "output=two.h5", "--quiet"], ranks=2, cwd=d)
    assert two.returncode == 0, two.stderr[-3000:]
    return d


def test_the_file_holds_each_attack_only_in_its_rounds(picked):
    with h5py.File(picked / "out.h5") as f:
        for run, want in EXPECTED.items():
            rounds = f[f"runs/{run}/rounds"]
            assert sorted(int(r) for r in rounds) == list(range(LAST[run] + 1))
            for name, on in want.items():
                have = {int(r) for r, g in rounds.items() if name in g.get("attacks", {})}
                assert have == on, (run, name, have)
            for r, g in rounds.items():  # a round without an attack still has its own numbers
                assert int(g.attrs["committed"]) == 1 and np.isfinite(g["clean_accuracy"][()]), (run, r)
        xs = f["runs/xs__seed0/rounds/0002/attacks/rt"]
        assert int(xs["shared_candidates"][()]) == 1  # the table is drawn for a round only one size evaluates
        s0, x0 = (f[f"runs/{k}/rounds/0000/attacks/rt/candidates_sha256"][()].tobytes()
                  for k in ("s__seed0", "xs__seed0"))
        assert s0 == x0
    tr = load_transfer(picked / "out.h5")
    spans = {(int(r), a): sorted(set(g.source)) for (r, a), g in tr.groupby(["round", "attack"])}
    assert spans == {(0, "rt"): ["s__seed0", "xs__seed0"], (0, "gcg"): ["s__seed0", "xs__seed0"],
                     (1, "gcg"): ["s__seed0", "xs__seed0"], (2, "rt"): ["xs__seed0"], (3, "gcg"): ["xs__seed0"]}
    att = load_attacks(picked / "out.h5")
    got = {(r.run, r.attack): set() for r in att.itertuples()}
    for r in att.itertuples():
        got[(r.run, r.attack)].add(r.round)
    assert got == {(run, a): on for run, want in EXPECTED.items() for a, on in want.items()}
    assert att[["asr", "asr_cum", "flops_nominal"]].notna().all().all()


def test_two_ranks_and_a_resume_give_the_same_file(picked):
    assert assert_same(picked / "out.h5", picked / "two.h5") > 100


def test_analyze_draws_each_attack_over_its_own_rounds(picked):
    rep = picked / "report"
    proc = run_cli(["analyze", "out.h5", "--out", str(rep)], cwd=picked)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fig3 = pd.read_csv(rep / "fig3_advtrain_rounds.csv")
    for (label, attack), g in fig3.groupby(["model_label", "attack"]):
        assert set(g["round"]) == EXPECTED[f"{label}__seed0"][attack], (label, attack)
        assert g["asr_median"].notna().all()  # no filler rows for rounds an attack skipped
    exp = picked / "export"
    proc = run_cli(["export", "out.h5", "--out", str(exp), "--format", "csv"], cwd=picked)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(exp / "attacks.csv")) == sum(len(on) for w in EXPECTED.values() for on in w.values())
    assert len(pd.read_csv(exp / "rounds.csv")) == 6


# ---------------------------------------------------------------- its provenance

def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def test_every_round_records_where_it_ran_and_its_device_hours(picked):
    for name, world in (("out.h5", 1), ("two.h5", 2)):
        df = load(picked / name)
        assert len(df) == 6
        assert (df[S.HOSTS] == socket.gethostname()).all() and (df[S.DEVICE_KIND] == "cpu").all()
        assert (df[S.WORLD_SIZE] == world).all() and (df[S.GROUP_SIZE] == 1).all() and (df[S.N_DEVICES] >= 1).all()
        assert df[S.DEVICE_NAMES].str.len().gt(0).all()
        np.testing.assert_allclose(df[S.DEVICE_HOURS], df[S.WALL_TIME] * df[S.N_DEVICES] / 3600)
        assert (df[S.DEVICE_HOURS] > 0).all()
    df = load(picked / "out.h5")
    assert set(df.loc[df["round"] <= 1, S.ATTEMPT]) == {0} and set(df.loc[df["round"] >= 2, S.ATTEMPT]) == {1}


def test_each_attempt_and_the_header_record_the_software(picked):
    commit = _git("rev-parse", "HEAD").strip()
    dirty = int(bool(_git("status", "--porcelain", "--untracked-files=no").strip()))
    import transformers

    a = load_attempts(picked / "out.h5").set_index(S.ATTEMPT)
    assert list(a.index) == [0, 1]
    assert (a[S.GIT_COMMIT] == commit).all() and (a[S.GIT_DIRTY] == dirty).all()
    assert (a[S.TORCH_VERSION] == str(torch.__version__)).all()
    assert (a[S.TRANSFORMERS_VERSION] == transformers.__version__).all()
    assert (a[S.CUDA_VERSION] == (torch.version.cuda or "")).all()
    assert (a[S.WORLD_SIZE] == 1).all() and list(a[S.RUN_ROUNDS]) == [4, 2]  # rounds 0-1 of both sizes; 2-3 of xs
    assert (a[S.LAST_COMMIT] >= a[S.STARTED]).all() and (a[S.DEVICE_HOURS] > 0).all()
    rounds = load(picked / "out.h5")
    for n, g in rounds.groupby(S.ATTEMPT):  # an attempt holds its devices at least as long as its rounds ran
        assert a.loc[n, S.DEVICE_HOURS] >= g[S.DEVICE_HOURS].max()
    assert int(load_attempts(picked / "two.h5")[S.WORLD_SIZE].iloc[0]) == 2
    with h5py.File(picked / "out.h5") as f:
        assert f.attrs[S.GIT_COMMIT] == commit and f.attrs[S.TORCH_VERSION] == str(torch.__version__)
        assert f.attrs[S.CREATED] == a.loc[0, S.STARTED]  # the header is the creating attempt's


def test_analyze_reports_the_compute_used(picked):
    rep = picked / "report_compute"
    proc = run_cli(["analyze", "out.h5", "--out", str(rep)], cwd=picked)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (rep / "report.md").read_text()
    assert "### Compute used" in md and "core-hours" in md and "table8a_compute.csv" in md
    compute = pd.read_csv(rep / "table8a_compute.csv").set_index("model_label")
    rounds = load(picked / "out.h5")
    for label, g in rounds.groupby(S.MODEL_LABEL):
        assert compute.loc[label, "device_hours"] == pytest.approx(g[S.DEVICE_HOURS].sum())
        assert compute.loc[label, "rounds"] == len(g) and compute.loc[label, "unit"] == "core-hours"
    attempts = pd.read_csv(rep / "table8b_attempts.csv", dtype={"git_commit": str})
    assert list(attempts["attempt"]) == [0, 1] and attempts["git_commit"].str.len().eq(40).all()
