"""The numbers behind every figure, as DataFrames: seed summaries, fits, target compute, tables.

Figures only draw these; the CSVs next to each PNG are these frames. A "size" is a model label
within a sweep; seeds are pooled or summarised, never mixed across sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hpcrobust.analysis.loader import SIZE_KEYS, Results, flatten, sweep_science
from hpcrobust.analysis.metrics import bootstrap_slope, laplace, logit10, ols, target_compute, wilson

PANEL = ["sweep", "task", "attack"]
DEFAULT_TARGETS = (0.01, 0.02, 0.05)


def _cached(res: Results, key: str, make):
    """Tables several figures share are computed once per Results."""
    if key not in res.cache:
        res.cache[key] = make()
    return res.cache[key]


def asr_summary(res: Results) -> pd.DataFrame:
    """Final-iteration reference ASR per (panel, round, size): median with min-max over seeds, or Wilson 95% for
    one seed; the cumulative ASR's median next to it."""
    return _cached(res, "asr_summary", lambda: _asr_summary(res)).copy()


def _asr_summary(res: Results) -> pd.DataFrame:
    keys = [*PANEL, "round", "model_label", "n_params"]
    g = res.attacks.groupby(keys, sort=False)
    aggs = {"n_seeds": ("seed", "nunique"), "n_runs": ("seed", "size"), "k": ("n_success", "first"),
            "n": ("n_correct", "first")}
    for col in ("asr", "asr_cum", "pre_acc", "post_acc"):
        aggs.update({f"{col}_median": (col, "median"), f"{col}_min": (col, "min"), f"{col}_max": (col, "max")})
    df = g.agg(**aggs).reset_index()
    one = df["n_runs"] == 1
    lo, hi = wilson(df["k"].to_numpy(np.float64), df["n"].to_numpy(np.float64))
    df["asr_lo"] = np.where(one, lo, df["asr_min"])
    df["asr_hi"] = np.where(one, hi, df["asr_max"])
    df["interval"] = np.where(one, "wilson95", "min-max")
    cols = [*keys, "n_seeds", "asr_median", "asr_min", "asr_max", "asr_lo", "asr_hi", "interval", "asr_cum_median",
            *(f"{c}_{s}" for c in ("pre_acc", "post_acc") for s in ("median", "min", "max"))]
    return df[cols].sort_values([*PANEL, "round", "n_params", "model_label"], kind="stable").reset_index(drop=True)


def per_iteration_flops(res: Results, keys: list[str]) -> pd.Series:
    """The reference's attack FLOPs per iteration: total attack FLOPs / n_iterations (setup included, spread
    evenly), averaged over the runs that share `keys`; indexed like res.attacks."""
    att = res.attacks
    return att.groupby(keys, sort=False)["flops_per_iteration"].transform("mean")


def scaling_points(res: Results) -> pd.DataFrame:
    """Every (run, round, attack, iteration t >= 1) with the reference ASR and the attack compute at t as the
    reference defines it: t times the seed-mean FLOPs per iteration of that (panel, round, size), absolute
    and as a fraction of pretraining compute. Iteration 0 (no attack step yet: ASR 0 by definition, and only
    GCG's setup FLOPs) is left out for every attack, as are curves with no example correct before the attack.
    `logit` (Laplace-smoothed, for drawing) and `logit_raw` (what the fits use: infinite at ASR 0 or 1) are
    both kept, with the cumulative ASR `asr_cum` for comparison."""
    a = res.asr
    att = res.attacks[["run", "round", "attack", "asr_definition", "early_stop"]].copy()
    att["flops_per_iteration"] = per_iteration_flops(res, [*PANEL, "round", "model_label"])
    df = a[[*SIZE_KEYS, "attack", "run", "seed", "round", "iteration", "asr", "asr_cum", "k", "n"]].merge(
        att, on=["run", "round", "attack"], how="left")
    df["flops"] = df["iteration"] * df["flops_per_iteration"]
    df["logit"] = logit10(laplace(df["k"].to_numpy(), df["n"].to_numpy()))
    df["logit_raw"] = logit10(df["asr"].to_numpy(np.float64))
    pre = a["pretrain_flops"].to_numpy(dtype=np.float64)
    df["flops_frac"] = np.where(pre > 0, df["flops"].to_numpy() / np.where(pre > 0, pre, 1), np.nan)
    keep = (df["iteration"] >= 1) & (df["flops"] > 0) & (df["n"] > 0)
    return df[keep].drop(columns="flops_per_iteration").reset_index(drop=True)


def scaling_fits(points: pd.DataFrame) -> pd.DataFrame:
    """The reference's attack-scaling fit: OLS of logit10(ASR) on log10(attack compute at t) per (panel, round,
    size), pooling the seeds' points of iterations >= 1; points at ASR 0 or 1 (infinite logit) are dropped and
    nothing is smoothed. The slope is the same against compute / pretraining compute (a constant per size)."""
    rows = []
    keys = [*PANEL, "round", "model_label", "n_params"]
    for key, g in points.groupby(keys, sort=False):
        fit = ols(np.log10(g["flops"].to_numpy()), g["logit_raw"].to_numpy())
        frac = ols(np.log10(g["flops_frac"].to_numpy()), g["logit_raw"].to_numpy())
        rows.append({**dict(zip(keys, key, strict=True)), "slope": fit.slope, "intercept": fit.intercept,
                     "intercept_frac": frac.intercept, "r2": fit.r2, "n_points": fit.n,
                     "n_seeds": int(g["seed"].nunique()), "asr_definition": g["asr_definition"].iloc[0],
                     "early_stop": bool((g["early_stop"] == 1).any())})
    cols = [*keys, "slope", "intercept", "intercept_frac", "r2", "n_points", "n_seeds", "asr_definition",
            "early_stop"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values([*PANEL, "round", "n_params"], kind="stable").reset_index(drop=True)


def slope_regression(fits: pd.DataFrame) -> pd.DataFrame:
    """The paper's second regression: the per-size attack-scaling slope on log10(parameters), per (panel,
    round); needs two sizes with a finite slope (else NaN)."""
    rows = []
    keys = [*PANEL, "round"]
    for key, g in fits.groupby(keys, sort=False):
        g = g[np.isfinite(g["slope"].to_numpy(np.float64))]
        fit = ols(np.log10(g["n_params"].to_numpy(np.float64)), g["slope"].to_numpy(np.float64))
        rows.append({**dict(zip(keys, key, strict=True)), "slope_per_decade": fit.slope,
                     "intercept": fit.intercept, "r2": fit.r2, "n_sizes": int(g["model_label"].nunique())})
    return pd.DataFrame(rows, columns=[*keys, "slope_per_decade", "intercept", "r2", "n_sizes"])


def offense_points(res: Results, targets: tuple[float, ...] = DEFAULT_TARGETS) -> pd.DataFrame:
    """Attack compute that first reaches each target ASR, per (run, round, attack), as the reference measures it:
    the iteration where the reference ASR first reaches the target (linear interpolation from the iteration
    before) times the FLOPs per iteration averaged over the size's seeds and rounds. `attack_frac` is that per
    attacked example over pretraining compute, `defense_frac` the seed-mean cumulative defense FLOPs of the
    (size, round) over pretraining compute, as in the reference's offense/defense figure."""
    a = res.asr
    bounds = np.flatnonzero(a["iteration"].to_numpy() == 0).tolist() + [len(a)]
    asr, flops = a["asr"].to_numpy(), a["flops"].to_numpy()
    rows = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        head = a.iloc[s]
        for t in targets:
            tc = target_compute(asr[s:e], flops[s:e], t)
            rows.append({"run": head["run"], "round": int(head["round"]), "attack": head["attack"], "target": t,
                         "iteration": tc.iteration, "never": tc.never, "undefined": not np.isfinite(asr[s:e]).all()})
    pts = pd.DataFrame(rows, columns=["run", "round", "attack", "target", "iteration", "never", "undefined"])
    att = res.attacks
    meta = att[["run", "round", "attack", *SIZE_KEYS, "seed", "pretrain_flops", "defense_flops_cum",
                "n_examples"]].copy()
    meta["flops_per_iteration"] = per_iteration_flops(res, [*PANEL, "model_label"])
    meta["defense_mean"] = att.groupby([*PANEL, "model_label", "round"], sort=False)["defense_flops_cum"].transform(
        "mean")
    pts = meta.merge(pts, on=["run", "round", "attack"], how="right")
    pts["attack_flops"] = pts["iteration"] * pts["flops_per_iteration"]
    pre = pts["pretrain_flops"].where(pts["pretrain_flops"] > 0)
    pts["attack_frac"] = pts["attack_flops"] / pts["n_examples"].where(pts["n_examples"] > 0) / pre
    pts["defense_frac"] = pts["defense_mean"] / pre
    pts = pts.drop(columns=["flops_per_iteration", "defense_mean"])
    return pts.sort_values([*PANEL, "target", "n_params", "model_label", "seed", "round"],
                           kind="stable").reset_index(drop=True)


def verdict(slope: float, lo: float, hi: float) -> str:
    """Who is ahead, from the slope of log attack compute on log defense compute (1 is parity)."""
    if not np.isfinite(slope):
        return "undetermined (too few rounds with defense compute)"
    if np.isfinite(lo) and lo > 1:
        return "defense ahead"
    if np.isfinite(hi) and hi < 1:
        return "offense ahead"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        side = "defense" if slope > 1 else "offense"
        return f"{side} ahead on the point estimate (one seed: no CI)"
    return "neither clearly ahead (CI includes 1)"


def offense_fits(points: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Slope of log10 attack compute on log10 defense compute per (panel, target, size), with a bootstrap CI over
    seeds. Round 0 has no defense compute and cannot sit on log axes, so only rounds >= 1 enter the fit."""
    rows = []
    keys = [*PANEL, "target", "model_label", "n_params"]
    for key, g in points.groupby(keys, sort=False):
        ok = g[(g["round"] >= 1) & (g["defense_flops_cum"] > 0) & (g["attack_flops"] > 0)]
        x, y = np.log10(ok["defense_flops_cum"].to_numpy(np.float64)), np.log10(ok["attack_flops"].to_numpy())
        fit = ols(x, y)
        groups = [(np.log10(s["defense_flops_cum"].to_numpy(np.float64)), np.log10(s["attack_flops"].to_numpy()))
                  for _, s in ok.groupby("seed")]
        lo, hi = bootstrap_slope(groups, n_boot, seed=seed) if np.isfinite(fit.slope) else (np.nan, np.nan)
        adv = g[g["round"] >= 1]
        rows.append({**dict(zip(keys, key, strict=True)), "slope": fit.slope, "ci_lo": lo, "ci_hi": hi,
                     "intercept": fit.intercept, "r2": fit.r2, "n_points": fit.n, "n_seeds": int(ok["seed"].nunique()),
                     "n_missing": int(adv["never"].sum()), "verdict": verdict(fit.slope, lo, hi)})
    cols = [*keys, "slope", "ci_lo", "ci_hi", "intercept", "r2", "n_points", "n_seeds", "n_missing", "verdict"]
    return pd.DataFrame(rows, columns=cols)


def never_reached(points: pd.DataFrame) -> pd.DataFrame:
    """Fraction of runs whose ASR never reaches each target, per (panel, target, size, round)."""
    keys = [*PANEL, "target", "model_label", "n_params", "round"]
    g = points.groupby(keys, sort=False)
    df = g.agg(n_runs=("run", "size"), n_never=("never", "sum"), n_undefined=("undefined", "sum")).reset_index()
    df["frac_never"] = df["n_never"] / df["n_runs"]
    return df.sort_values([*PANEL, "target", "n_params", "round"], kind="stable").reset_index(drop=True)


def transfer_sizes(res: Results) -> pd.DataFrame:
    """Cross-size transfer ASR per (sweep, round, attack, source size, target size): the mean over seeds of
    same-seed pairs, so per-seed files and one combined file give the same matrix."""
    t = res.transfer.loc[res.transfer["same_seed"].astype(bool)]
    keys = ["sweep", "round", "attack", "source_label", "source_n_params", "target_label", "target_n_params"]
    df = t.groupby(keys, sort=False).agg(asr=("asr", "mean"), n_seeds=("asr", "count")).reset_index()
    return df.sort_values(["sweep", "round", "attack", "source_n_params", "target_n_params"],
                          kind="stable").reset_index(drop=True)


def pretrain_table(res: Results) -> pd.DataFrame:
    """Pretraining compute per model with its N and D (6·N·D; NaN in files written before they were stored), and
    the per-model settings from the stored config."""
    per_model = {}
    for sw in res.sweeps:
        for m in sw.config.get("models") or []:
            label = m.get("label") or str(m.get("name_or_path", "")).rstrip("/").split(":")[-1].split("/")[-1]
            per_model.setdefault((sw.label, label), m)
    rows = []
    for (sweep, label), g in res.runs.groupby(["sweep", "model_label"], sort=False):
        m = per_model.get((sweep, label), {})
        rows.append({"sweep": sweep, "model_label": label, "model": g["model"].iloc[0],
                     "n_params": g["n_params"].iloc[0], "pretrain_flops": g["pretrain_flops"].iloc[0],
                     "pretrain_n": g["pretrain_n"].iloc[0], "pretrain_tokens": g["pretrain_tokens"].iloc[0],
                     "seeds": " ".join(str(s) for s in sorted(g["seed"].unique())),
                     "lr_scale": m.get("lr_scale", np.nan), "rounds": int(g["n_rounds"].max()) - 1})
    return pd.DataFrame(rows).sort_values(["sweep", "n_params"], kind="stable").reset_index(drop=True)


def hyperparameter_table(res: Results) -> pd.DataFrame:
    """Every science setting from the stored config: one row per key, one column per sweep (seeds: the union
    over the sweep's files; models: see the pretraining table)."""
    cols = {}
    for sw in res.sweeps:
        seeds = sorted(res.runs.loc[res.runs["sweep"] == sw.label, "seed"].unique())
        cols[sw.label] = {"seeds": " ".join(str(s) for s in seeds), **flatten(sweep_science(sw.config))}
    keys = list(dict.fromkeys(k for c in cols.values() for k in c))
    return pd.DataFrame({"key": keys, **{lab: [c.get(k, "") for k in keys] for lab, c in cols.items()}})


UNITS = {"gpu": "GPU-hours", "cpu": "core-hours"}


def compute_table(res: Results) -> pd.DataFrame:
    """Device-hours per (sweep, size, device kind) from the rounds' provenance: GPU-hours on GPUs, core-hours on CPU
    (a round's wall time times its group's devices; cross-run phases and idle time are in the attempts table).
    Rounds of files written before provenance was recorded are counted in `rounds_unrecorded`."""
    cols = ["sweep", "model_label", "n_params", "device_kind", "unit", "device_names", "runs", "rounds",
            "rounds_unrecorded", "wall_hours", "device_hours"]
    r = res.rounds
    if not len(r):
        return pd.DataFrame(columns=cols)
    r = r.assign(device_kind=r["device_kind"] if "device_kind" in r else np.nan,
                 device_names=r["device_names"] if "device_names" in r else np.nan,
                 device_hours=r["device_hours"] if "device_hours" in r else np.nan)
    r["recorded"] = r["device_hours"].notna()
    r["device_kind"] = r["device_kind"].where(r["recorded"], "unrecorded")
    g = r.groupby(["sweep", "model_label", "n_params", "device_kind"], sort=False, dropna=False)
    df = g.agg(device_names=("device_names", lambda v: ", ".join(dict.fromkeys(str(x) for x in v.dropna()))),
               runs=("run", "nunique"), rounds=("round", "size"), recorded=("recorded", "sum"),
               wall_s=("wall_time", "sum"), device_hours=("device_hours", "sum")).reset_index()
    df["rounds_unrecorded"] = df["rounds"] - df["recorded"]
    df["unit"] = df["device_kind"].map(UNITS).fillna("")
    df["wall_hours"] = df["wall_s"] / 3600.0
    df["device_hours"] = df["device_hours"].where(df["recorded"] > 0)
    return df.sort_values(["sweep", "n_params", "model_label"], kind="stable")[cols].reset_index(drop=True)


def attempts_table(res: Results) -> pd.DataFrame:
    """One row per attempt of each file: when, where, on what code, and the device-hours it held its devices."""
    cols = ["sweep", "file", "attempt", "started", "last_commit", "hosts", "device_kind", "device_names",
            "world_size", "n_devices", "run_rounds", "device_hours", "hpcrobust_version", "git_commit", "git_dirty",
            "torch_version", "cuda_version", "transformers_version"]
    a = res.attempts
    if not len(a):
        return pd.DataFrame(columns=cols)
    a = a.reindex(columns=cols)
    return a.sort_values(["sweep", "file", "attempt"], kind="stable").reset_index(drop=True)
