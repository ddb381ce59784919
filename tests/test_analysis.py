"""Analysis numbers: statistics against hand-worked values, and fits on synthetic files whose answers are known."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from hpcrobust.analysis import load
from hpcrobust.analysis import tables as T
from hpcrobust.analysis.loader import CUMULATIVE_ASR, REFERENCE_ASR
from hpcrobust.analysis.metrics import bootstrap_slope, laplace, logit10, ols, target_compute, wilson
from hpcrobust.analysis.synthetic import SynthAttack, SynthSize, SynthSpec, asr_curve, default_sizes, write_synthetic

# ------------------------------------------------------------------ statistics


def test_wilson_matches_hand_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(np.array([3, 0]), np.array([0, 0]))
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_laplace_logit10():
    assert laplace(0, 8) == pytest.approx(0.1)
    assert logit10(laplace(0, 8)) == pytest.approx(math.log10(0.1 / 0.9))
    assert logit10(0.5) == 0
    assert np.isfinite(logit10(laplace(np.array([0, 50]), np.array([50, 50])))).all()


def test_ols_recovers_a_line_and_r2():
    x = np.linspace(0, 3, 20)
    fit = ols(x, 0.7 * x - 2)
    assert (fit.slope, fit.intercept, fit.r2, fit.n) == (pytest.approx(0.7), pytest.approx(-2), pytest.approx(1), 20)
    noisy = ols(x, 0.7 * x + np.random.default_rng(0).normal(0, 0.3, 20))
    assert 0 < noisy.r2 < 1
    assert math.isnan(ols([1, 1, np.nan], [1, 2, 3]).slope)


def test_target_compute_interpolates_in_iterations():
    asr = np.array([0.0, 0.0, 0.01, 0.03, 0.10])
    cum = np.array([5.0, 15.0, 25.0, 45.0, 85.0])  # uneven steps: FLOPs interpolate within the step
    t = target_compute(asr, cum, 0.02)
    assert t.iteration == pytest.approx(2.5) and t.flops == pytest.approx(35.0) and not t.never
    assert target_compute(asr, cum, 0.01).flops == pytest.approx(25.0)  # reached exactly at iteration 2
    assert target_compute(np.array([0.05, 0.2]), cum[:2], 0.02).flops == 5.0  # already there: setup cost
    never = target_compute(asr, cum, 0.5)
    assert never.never and math.isnan(never.flops)
    undefined = target_compute(np.array([np.nan, np.nan]), cum[:2], 0.01)
    assert not undefined.never and math.isnan(undefined.flops)


def test_bootstrap_ci_covers_the_true_slope_about_95_percent():
    """Seeds as units: each seed has its own slope around 0.7; the CI over seeds should cover 0.7 ~95% of
    the time (percentile bootstrap with 10 seeds runs a little short of nominal)."""
    rng = np.random.default_rng(1)
    x = np.log10(np.array([1e10, 2e10, 4e10, 8e10, 1.6e11]))
    hits, n_rep = 0, 200
    for _ in range(n_rep):
        groups = [(x, rng.normal(0, 0.5) + (0.7 + rng.normal(0, 0.1)) * x + rng.normal(0, 0.02, len(x)))
                  for _ in range(10)]
        lo, hi = bootstrap_slope(groups, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 0.7 <= hi
    assert 0.84 <= hits / n_rep <= 0.99, hits / n_rep


def test_bootstrap_needs_two_seeds():
    x = np.arange(4.0)
    assert all(math.isnan(v) for v in bootstrap_slope([(x, x)], 100))
    lo, hi = bootstrap_slope([(x, x), (x, 2 * x)], 200)
    assert 1 <= lo <= hi <= 2


# ------------------------------------------------------------------ synthetic files with known answers

# offense/defense slopes d/b: 0.5 (offense ahead), 1.0 (parity), 1.25 (defense ahead)
KNOWN = [SynthSize("a", 10**5, a=-2.4, b=0.8, d=0.4), SynthSize("b", 10**6, a=-2.6, b=1.0, d=1.0),
         SynthSize("c", 10**7, a=-2.3, b=1.2, d=1.5)]


def known_spec(**kw) -> SynthSpec:
    """Large n and many iterations: the smoothed logit stays inside its representable range (no clipping)."""
    base = {"sizes": KNOWN, "seeds": [0, 1, 2], "rounds": 3, "n_examples": 2000,
            "attacks": [SynthAttack("gcg", "gcg", 100)], "transfer": False}
    return SynthSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    spec = known_spec(seed_noise=0.05, slope_noise=0.05)
    return spec, load(write_synthetic(tmp_path_factory.mktemp("known") / "known.h5", spec))


def _reference_flops_per_iteration(att: SynthAttack, size: SynthSize) -> float:
    """Total attack FLOPs / n_iterations of a synthetic attack without early stop (setup spread evenly)."""
    per_it = att.flops_per_param * size.n_params
    return per_it * (att.n_iterations + att.setup) / att.n_iterations


def test_attack_scaling_slopes_are_the_known_ones(known):
    spec, res = known
    fits = T.scaling_fits(T.scaling_points(res))
    r0 = fits[fits["round"] == 0].set_index("model_label")
    att = spec.attacks[0]
    n = int(round(KNOWN[0].accuracy * spec.n_examples))
    t = np.arange(1, att.n_iterations + 1)
    for s in spec.sizes:
        # by hand from the stored curves: iterations >= 1, compute t x FLOPs/iteration, raw logit, 0 and 1 dropped
        xs, ys = [], []
        for seed in spec.seeds:
            asr = asr_curve(spec, s, seed, 0, att, n)[1:]
            ok = (asr > 0) & (asr < 1)
            xs.append(np.log10(t * _reference_flops_per_iteration(att, s))[ok])
            ys.append(logit10(asr[ok]))
        want = ols(np.concatenate(xs), np.concatenate(ys))
        assert r0.loc[s.label, "slope"] == pytest.approx(want.slope, abs=1e-9)
        assert r0.loc[s.label, "n_points"] == want.n and want.n >= 3 * 90
        assert r0.loc[s.label, "slope"] == pytest.approx(s.b, abs=0.02)  # only rounding to whole examples
        assert r0.loc[s.label, "r2"] > 0.95  # < 1 through the per-seed intercept noise and the rounding
    # every round has its own fit, with the same slope (rounds only shift the intercept)
    assert len(fits) == len(spec.sizes) * (spec.rounds + 1)
    assert np.allclose(fits.groupby("model_label")["slope"].agg("std"), 0, atol=0.02)
    assert (fits["asr_definition"] == REFERENCE_ASR).all() and not fits["early_stop"].any()


def test_slope_on_log_parameters_is_the_known_one(known):
    """The paper's regression of the attack-scaling slope on log10(parameters): KNOWN's b grows 0.2 a decade."""
    _, res = known
    reg = T.slope_regression(T.scaling_fits(T.scaling_points(res)))
    assert len(reg) == 4 and (reg["n_sizes"] == 3).all()
    assert np.allclose(reg["slope_per_decade"], 0.2, atol=0.02)
    assert np.allclose(reg["intercept"] + 6 * reg["slope_per_decade"], 1.0, atol=0.02)  # b at 10^6 parameters
    one = T.slope_regression(T.scaling_fits(T.scaling_points(res)).query("model_label == 'a'"))
    assert one["n_sizes"].eq(1).all() and one["slope_per_decade"].isna().all()


def test_iteration_0_is_left_out_for_every_attack(tmp_path):
    """Bug 2 of issue 11: GCG's iteration 0 (setup, 1/100 of an iteration, ASR 0) pulled the slope down (to 1.20
    here) while RandomToken and BEAST (no setup FLOPs) lost it. Few iterations, as the paper's GCG evaluations."""
    sizes = [SynthSize("s", 10**6, a=-1.0, b=1.5, d=0.5)]
    atts = [SynthAttack("gcg", "gcg", 10, setup_fraction=1 / 100), SynthAttack("rt", "random_token", 10),
            SynthAttack("beast", "beast", 10)]
    spec = SynthSpec(sizes=sizes, seeds=[0, 1, 2], rounds=0, n_examples=200, attacks=atts, transfer=False)
    assert SynthAttack("g").setup == pytest.approx(1 / 50) and atts[1].setup == atts[2].setup == 0
    res = load(write_synthetic(tmp_path / "it0.h5", spec))
    cur = res.asr[res.asr["attack"] == "gcg"]
    assert (cur.loc[cur["iteration"] == 0, "asr"] == 0).all() and (cur["flops"] > 0).all()
    pts = T.scaling_points(res)
    assert (pts["iteration"] >= 1).all()
    fits = T.scaling_fits(pts).set_index("attack")
    for att in atts:
        assert fits.loc[att.name, "slope"] == pytest.approx(1.5, abs=0.03), att.name
        assert fits.loc[att.name, "n_points"] == 3 * 10


def test_interpolated_compute_matches_the_known_curve(known):
    spec, res = known
    size, seed, rnd, target = spec.sizes[1], 1, 3, 0.02
    pts = T.offense_points(res, (target,))
    row = pts[(pts["model_label"] == size.label) & (pts["seed"] == seed) & (pts["round"] == rnd)].iloc[0]
    n = int(round(size.accuracy * spec.n_examples))
    asr = asr_curve(spec, size, seed, rnd, spec.attacks[0], n)
    i = int(np.argmax(asr >= target))
    assert 0 < i and asr[i - 1] < target <= asr[i]
    frac = (target - asr[i - 1]) / (asr[i] - asr[i - 1])
    assert row["iteration"] == pytest.approx(i - 1 + frac)
    # the reference's compute: interpolated iteration x total attack FLOPs / n_iterations (setup spread evenly)
    flops = (i - 1 + frac) * _reference_flops_per_iteration(spec.attacks[0], size)
    assert row["attack_flops"] == pytest.approx(flops)
    pre = 6.0 * size.n_params * spec.pretrain_tokens
    assert row["attack_frac"] == pytest.approx(flops / spec.n_examples / pre)  # per attacked example
    assert row["defense_flops_cum"] == pytest.approx(spec.defense_flops_per_param * size.n_params * rnd)
    assert row["defense_frac"] == pytest.approx(row["defense_flops_cum"] / pre)


def test_offense_defense_slopes_and_bootstrap_ci(known):
    """The known log-log slope of attack compute on defense compute is d/b per size."""
    spec, res = known
    fits = T.offense_fits(T.offense_points(res, (0.01, 0.02)), n_boot=500).set_index(["target", "model_label"])
    for s in spec.sizes:
        for t in (0.01, 0.02):
            f = fits.loc[(t, s.label)]
            assert f["slope"] == pytest.approx(s.d / s.b, abs=0.03)
            assert f["ci_lo"] - 0.03 <= s.d / s.b <= f["ci_hi"] + 0.03
            assert f["ci_lo"] < f["slope"] < f["ci_hi"]
            assert f["n_points"] == 3 * spec.rounds and f["n_seeds"] == 3
    assert fits.loc[(0.01, "a"), "verdict"] == "offense ahead"
    assert fits.loc[(0.01, "b"), "verdict"] == "neither clearly ahead (CI includes 1)"
    assert fits.loc[(0.01, "c"), "verdict"] == "defense ahead"


def test_never_reached_targets_are_missing_and_counted(tmp_path):
    hard = [SynthSize("h", 10**6, a=-3.0, b=0.5, d=1.0)]  # max logit at round 3: -3 + 0.5*log10(11) - 0.48
    spec = known_spec(sizes=hard, seeds=[0, 1], attacks=[SynthAttack("gcg", "gcg", 10)])
    res = load(write_synthetic(tmp_path / "hard.h5", spec))
    pts = T.offense_points(res, (0.05,))
    late = pts[pts["round"] >= 2]
    assert late["never"].all() and late["attack_flops"].isna().all()
    nev = T.never_reached(pts)
    assert (nev[nev["round"] >= 2]["frac_never"] == 1).all()
    fit = T.offense_fits(pts, 100).iloc[0]
    assert fit["n_missing"] == int(pts[pts["round"] >= 1]["never"].sum()) and fit["n_missing"] >= 6


# ------------------------------------------------------------------ loading and merging


def test_load_reads_only_committed_rounds_and_transfer(tmp_path):
    spec = SynthSpec(rounds=2, uncommitted_round=True)
    res = load(write_synthetic(tmp_path / "r.h5", spec))
    assert res.rounds["round"].max() == 2 and res.asr["round"].max() == 2
    assert set(res.transfer["round"]) == {0, 1, 2}
    assert len(res.runs) == len(spec.sizes) * len(spec.seeds)
    assert list(res.runs["n_params"]) == sorted(res.runs["n_params"])
    assert (res.runs["train_attack"] == "gcg_train").all()
    # tidy ASR: one row per iteration, k = ASR * n, cumulative FLOPs
    one = res.asr[(res.asr["run"] == "m1__seed0") & (res.asr["round"] == 1) & (res.asr["attack"] == "gcg")]
    assert list(one["iteration"]) == list(range(11))
    assert np.allclose(one["k"], one["asr"] * one["n"])
    assert np.allclose(np.diff(one["flops"]), 1e4 * 10**6)


def test_uncommitted_round_data_is_invisible(tmp_path):
    path = write_synthetic(tmp_path / "u.h5", SynthSpec(rounds=1, uncommitted_round=False))
    before = load(path).attacks.copy()
    with h5py.File(path, "r+") as f:  # a round that is being written: present but not committed
        f["runs/m0__seed0/rounds/0001"].attrs["committed"] = 0
    after = load(path)
    assert len(after.attacks) == len(before) - 2
    assert not ((after.attacks["run"] == "m0__seed0") & (after.attacks["round"] == 1)).any()


def _frames(res):
    drop = ["file", "run_name"]
    return {k: getattr(res, k).drop(columns=[c for c in drop if c in getattr(res, k)]).reset_index(drop=True)
            for k in ("runs", "rounds", "attacks", "asr")}


def test_split_per_seed_files_merge_to_the_combined_tables(tmp_path):
    spec = SynthSpec(seeds=[0, 1, 2], rounds=1)
    whole = load(write_synthetic(tmp_path / "all.h5", spec))
    parts = load([write_synthetic(tmp_path / f"seed{s}.h5", SynthSpec(seeds=[s], rounds=1)) for s in (2, 0, 1)])
    assert len(parts.sweeps) == 1 and len(parts.sweeps[0].files) == 3
    for name, df in _frames(whole).items():
        assert df.equals(_frames(parts)[name]), name
    same = whole.transfer[whole.transfer["same_seed"]].reset_index(drop=True)
    assert same.equals(parts.transfer.reset_index(drop=True))
    assert T.transfer_sizes(whole).equals(T.transfer_sizes(parts))


def test_different_experiments_become_separate_sweeps(tmp_path):
    a = write_synthetic(tmp_path / "gcg.h5", SynthSpec(seeds=[0], rounds=1))
    b = write_synthetic(tmp_path / "rt.h5", SynthSpec(seeds=[0], rounds=1, train_attack="rt_train",
                                                    train_attack_type="random_token"))
    res = load([a, b])
    assert [s.label for s in res.sweeps] == ["advtrain.attack=gcg_train", "advtrain.attack=rt_train"]
    assert res.runs["run"].iloc[0] == "advtrain.attack=gcg_train/m0__seed0"
    assert res.runs["run"].is_unique and len(res.runs) == 2 * 3
    assert set(res.runs["train_attack"]) == {"gcg_train", "rt_train"}
    assert set(res.runs["train_attack_type"]) == {"gcg", "random_token"}
    # the same run names in a file of the same experiment: kept apart, not merged or overwritten
    c = write_synthetic(tmp_path / "gcg_again.h5", SynthSpec(seeds=[0], rounds=1))
    res2 = load([a, c])
    assert len(res2.sweeps) == 2 and len(res2.runs) == 6 and res2.runs["run"].is_unique


def test_reference_and_cumulative_asr_are_read_back(tmp_path):
    """asr_current (the reference's ASR) feeds `asr`; the cumulative `asr` stays as `asr_cum`."""
    spec = SynthSpec(sizes=default_sizes(2), seeds=[0], rounds=1, n_examples=300, transfer=False,
                     attacks=[SynthAttack("gcg", "gcg", 30), SynthAttack("rt", "random_token", 30)])
    path = write_synthetic(tmp_path / "v2.h5", spec)
    res = load(path)
    with h5py.File(path, "r") as f:
        g = f["runs/m1__seed0/rounds/0001/attacks/gcg"]
        cur, cum = g["asr_current"][()], g["asr"][()]
    one = res.asr[(res.asr["run"] == "m1__seed0") & (res.asr["round"] == 1) & (res.asr["attack"] == "gcg")]
    assert np.array_equal(one["asr"], cur) and np.array_equal(one["asr_cum"], cum)
    assert cur[0] == 0 and (cur <= cum + 1e-12).all() and (np.diff(cum) >= 0).all()
    assert (cur < cum - 1e-12).any()  # GCG's current candidate can lose its success
    rt = res.asr[res.asr["attack"] == "rt"]
    assert np.array_equal(rt["asr"], rt["asr_cum"])  # RandomToken keeps a success
    assert (res.attacks["asr_definition"] == REFERENCE_ASR).all() and (res.attacks["early_stop"] == 0).all()
    assert np.allclose(res.runs["pretrain_n"], res.runs["n_params"])
    assert np.allclose(res.runs["pretrain_flops"], 6 * res.runs["pretrain_n"] * res.runs["pretrain_tokens"])
    old = load(write_synthetic(tmp_path / "old.h5", SynthSpec(**{**spec.__dict__, "without_v2": True})))
    assert (old.attacks["asr_definition"] == CUMULATIVE_ASR).all() and old.attacks["early_stop"].isna().all()
    assert np.array_equal(old.asr["asr"], old.asr["asr_cum"]) and np.array_equal(old.asr["asr_cum"], res.asr["asr_cum"])
    assert old.runs["pretrain_n"].isna().all()


def test_early_stop_shrinks_the_attack_flops(tmp_path):
    """With early stop an example's success is kept and it stops running: later iterations cost less."""
    att = SynthAttack("gcg", "gcg", 20, early_stop=True)
    spec = SynthSpec(sizes=[SynthSize("s", 10**6, a=-0.5, b=1.0)], seeds=[0], rounds=0, attacks=[att],
                     transfer=False)
    res = load(write_synthetic(tmp_path / "es.h5", spec))
    per_it = np.diff(res.asr["flops"].to_numpy())
    assert (np.diff(per_it) <= 0).all() and per_it[-1] < 0.8 * per_it[0]
    assert np.array_equal(res.asr["asr"], res.asr["asr_cum"]) and (res.attacks["early_stop"] == 1).all()
    assert T.scaling_fits(T.scaling_points(res))["early_stop"].all()
