"""Result files -> tidy DataFrames, merging the runs of several files (one per job, seed or size).

Files whose stored configs agree on everything but `seeds`, `models` and the non-science keys
(output, launch, debug, rank layout) belong to one *sweep*, and their runs are pooled as if one job
had written them. Files of different experiments (another training attack, another task) become
separate sweeps; a file whose run names collide with a sweep's runs also starts its own sweep. With
more than one sweep, run ids are prefixed by the sweep label (the config keys that differ).
Only committed rounds and committed transfer matrices are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from hpcrobust.errors import UserError
from hpcrobust.store import schema as S
from hpcrobust.store.identity import NOT_SWEEP, flatten, science, sweep_key_of
from hpcrobust.store.results import ResultsFile, committed_id, is_committed
from hpcrobust.store.schema import RUNS, TRANSFER, decode_text

SIZE_KEYS = ["sweep", "task", "model_label", "n_params"]
CURVE = ("asr", "asr_cum", "k", "flops", "flops_actual")  # per-iteration columns of Results.asr
# What the `asr` columns hold: the reference's ASR (the candidate current at t is misclassified), or, for files
# written before `asr_current` existed, the cumulative ASR (flipped at or before t), said so in the report.
REFERENCE_ASR = "reference (current candidate at t)"
CUMULATIVE_ASR = "cumulative (file has no asr_current)"
# Provenance read with each round (columns of `rounds`; absent in files written before it was recorded) and the
# columns of `attempts` (one row per committed attempt of a file): see store/schema.py.
ROUND_PROVENANCE = [k for k in S.ROUND_ATTRS if k != S.ROUND]
ATTEMPT_COLUMNS = ["sweep", "file", *S.ATTEMPT_ATTRS]


@dataclass
class Sweep:
    label: str
    key: str  # hash of the config minus seeds, models and non-science keys
    files: list[Path]
    config: dict  # the first file's stored config (all files of a sweep agree on its science)
    run_names: set[str] = field(default_factory=set)

    @property
    def experiment(self) -> str:
        """The experiment's name stored with the first file ('' for files written before names existed)."""
        return str(self.config.get("experiment") or "")


@dataclass
class Results:
    """Tidy tables. runs: one row per run; rounds: per committed (run, round), with its provenance; attacks: per
    (run, round, attack) summary, only for the rounds an attack ran in; asr: per (run, round, attack,
    iteration); transfer: per (round, attack, source, target); attempts: per committed attempt of each file.
    `asr` columns hold the reference's ASR (see REFERENCE_ASR), `asr_cum` the cumulative one; `flops` is the
    cumulative nominal attack FLOPs after each iteration (index 0: setup)."""

    runs: pd.DataFrame
    rounds: pd.DataFrame
    attacks: pd.DataFrame
    asr: pd.DataFrame
    transfer: pd.DataFrame
    sweeps: list[Sweep]
    attack_info: pd.DataFrame  # per (sweep, attack): type, placement, n_iterations, ensemble, rounds
    attempts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ATTEMPT_COLUMNS))  # per attempt
    cache: dict = field(default_factory=dict, repr=False)  # derived tables shared by several figures

    @property
    def title(self) -> str:
        """The experiments' names, for report and figure titles ('' when the files carry none)."""
        return ", ".join(dict.fromkeys(s.experiment for s in self.sweeps if s.experiment))


def sweep_science(config: dict) -> dict:
    """The stored config minus seeds, models and what does not change the numbers (store/identity.py)."""
    return science(config, NOT_SWEEP)


def _label_sweeps(sweeps: list[Sweep]) -> None:
    """One sweep: 'main'. Several: their experiment names when each has its own, else the config keys that tell
    them apart (e.g. advtrain.attack=rt_train), so the label does not depend on how the files were split; the
    first file's stem when nothing differs."""
    if len(sweeps) == 1:
        sweeps[0].label = "main"
        return
    names = [s.experiment for s in sweeps]
    if all(names) and len(set(names)) == len(names):
        for s in sweeps:
            s.label = s.experiment
        return
    flat = [flatten(sweep_science(s.config)) for s in sweeps]
    differ = [k for k in sorted(set().union(*flat)) if len({f.get(k) for f in flat}) > 1]
    differ.sort(key=lambda k: (not k.startswith("advtrain.attack"), not k.startswith("task."), k))
    used: list[str] = []
    for k in differ:  # as few keys as tell the sweeps apart
        used.append(k)
        if len({tuple(f.get(u) for u in used) for f in flat}) == len(flat) or len(used) == 3:
            break
    for s, f in zip(sweeps, flat, strict=True):
        label = ",".join(f"{k}={f.get(k) or 'none'}" for k in used)
        s.label = label[:60] or s.files[0].stem
    labels = [s.label for s in sweeps]
    for i, s in enumerate(sweeps):
        if labels.count(s.label) > 1:
            s.label = f"{s.label}#{labels[:i].count(s.label) + 1}"


def train_attack(config: dict) -> tuple[str, str]:
    """(name, type) of the adversarial-training attack, or ('none', 'none') without training rounds."""
    adv = config.get("advtrain") or {}
    rounds = int(adv.get("rounds", 0) or 0)
    if rounds <= 0 and not any(int(m.get("rounds", -1)) > 0 for m in config.get("models") or []):
        return "none", "none"
    name = str(adv.get("attack", "") or "none")
    types = {a.get("name"): a.get("type", "?") for a in config.get("train_attacks") or []}
    return name, str(types.get(name, "?"))


# h5py's object layer costs ~0.3 ms per dataset; a paper-sized file holds tens of thousands, so rounds
# and attacks are read through the low-level API (5x faster), with HDF5 converting to the wanted dtype.
_ALL = h5py.h5s.ALL
_ATTACKS = S.ATTACKS.encode()


def _names(gid) -> list[bytes]:
    return sorted(gid)


def _scalar(gid, name: bytes) -> float:
    """A 0-d numeric dataset as float; NaN for anything else (a group, a string, an array)."""
    try:
        d = h5py.h5d.open(gid, name)
        arr = np.empty((), np.float64)
        d.read(_ALL, _ALL, arr)
    except (KeyError, TypeError, ValueError, OSError):
        return np.nan
    return float(arr)


def _attrs(gid, names) -> dict:
    """The attributes of `names` that a group (low-level id) has: strings decoded, numbers as Python numbers."""
    attrs = h5py.Group(gid).attrs
    out = {}
    for name in names:
        if name in attrs:
            v = attrs[name]
            v = v.decode() if isinstance(v, bytes) else v
            out[name] = v.item() if isinstance(v, np.generic) else v
    return out


def _array(gid, name: bytes, dtype) -> np.ndarray:
    d = h5py.h5d.open(gid, name)
    arr = np.empty(d.shape, dtype)
    d.read(_ALL, _ALL, arr)
    return arr


class _Reader:
    """Accumulates one file's rows; columns are built once at the end (fast for large files)."""

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self.rounds: list[dict] = []
        self.attacks: list[dict] = []
        self.asr: list[tuple[dict, dict]] = []
        self.transfer: list[pd.DataFrame] = []
        self.attempts: list[dict] = []

    def read_file(self, path: Path, f: h5py.File, sweep: Sweep, prefix: str) -> None:
        name, ttype = train_attack(sweep.config)
        for run, g in f[RUNS].items():
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            rid = prefix + run
            first: dict = {}
            n_rounds = 0
            rgs = g[S.ROUNDS].id if S.ROUNDS in g else None
            for r in _names(rgs) if rgs is not None else []:
                rg = h5py.h5g.open(rgs, r)
                if not committed_id(rg):
                    continue
                row = {"run": rid, "round": int(r)}
                row.update({k.decode(): _scalar(rg, k) for k in _names(rg) if k != _ATTACKS})
                row.update(_attrs(rg, ROUND_PROVENANCE))
                self.rounds.append(row)
                first = first or row
                n_rounds += 1
                if _ATTACKS in rg:
                    ag = h5py.h5g.open(rg, _ATTACKS)
                    for att in _names(ag):
                        self._attack(path, rid, int(r), att.decode(), h5py.h5g.open(ag, att),
                                     row.get(S.DEFENSE_FLOPS_CUM, np.nan))
            if not n_rounds:
                continue
            self.runs.append({"run": rid, "run_name": run, "sweep": sweep.label, "file": str(path),
                              "task": str(meta.get(S.TASK, "?")), "model": str(meta.get(S.MODEL, "?")),
                              "model_label": str(meta.get(S.MODEL_LABEL, run.split("__")[0])),
                              "seed": int(meta.get(S.SEED, -1)), "n_params": first.get(S.N_PARAMS, np.nan),
                              "pretrain_flops": first.get(S.PRETRAIN_FLOPS, np.nan),
                              "pretrain_n": first.get(S.PRETRAIN_N, np.nan),
                              "pretrain_tokens": first.get(S.PRETRAIN_TOKENS, np.nan),
                              "train_attack": name, "train_attack_type": ttype, "n_rounds": n_rounds})
        for ag in (f[S.ATTEMPTS].values() if S.ATTEMPTS in f else []):
            if is_committed(ag):
                self.attempts.append({"sweep": sweep.label, "file": str(path), **_attrs(ag.id, S.ATTEMPT_ATTRS)})
        for r, tg in (f[TRANSFER].items() if TRANSFER in f else []):
            if is_committed(tg):
                for att, ag in tg.items():
                    names = [prefix + n for n in decode_text(ag[S.TRANSFER_RUNS][()])]
                    mat = np.asarray(ag[S.TRANSFER_ASR][()], dtype=np.float64)
                    src, tgt = np.meshgrid(names, names, indexing="ij")
                    self.transfer.append(pd.DataFrame({"round": int(r), "attack": att, "source": src.ravel(),
                                                       "target": tgt.ravel(), "asr": mat.ravel()}))

    def _attack(self, path: Path, rid: str, rnd: int, att: str, ag, dcum: float) -> None:
        try:
            cum = _array(ag, S.ASR.encode(), np.float64)
            correct = _array(ag, S.CORRECT_BEFORE.encode(), bool)
            fl = _array(ag, S.ATTACK_FLOPS_NOMINAL.encode(), np.float64)
        except (KeyError, TypeError, ValueError, OSError):
            raise UserError(f"{path}: run {rid} round {rnd} attack {att} lacks readable asr, correct_before"
                            " or flops_nominal") from None
        try:
            asr, definition = _array(ag, S.ASR_CURRENT.encode(), np.float64), REFERENCE_ASR
        except (KeyError, TypeError, ValueError, OSError):
            asr, definition = cum, CUMULATIVE_ASR  # written before asr_current existed
        try:
            fa = _array(ag, S.ATTACK_FLOPS_ACTUAL.encode(), np.float64)
        except (KeyError, TypeError, ValueError, OSError):
            fa = fl * np.nan
        n = int(correct.sum())
        k = np.where(np.isfinite(asr), asr, 0.0) * n
        cflops = np.cumsum(fl)
        self.asr.append(({"run": rid, "round": rnd, "attack": att, "n": n},
                         {"iteration": np.arange(len(asr)), "asr": asr, "asr_cum": cum, "k": k, "flops": cflops,
                          "flops_actual": np.cumsum(fa)}))
        final = asr[-1] if len(asr) else np.nan
        n_ex, n_its = len(correct), len(asr) - 1
        pre = n / n_ex if n_ex else np.nan
        total = cflops[-1] if len(cflops) else 0.0
        self.attacks.append({"run": rid, "round": rnd, "attack": att, "n_examples": n_ex, "n_correct": n,
                             "n_success": k[-1] if len(k) else 0.0, "asr": final,
                             "asr_cum": cum[-1] if len(cum) else np.nan, "asr_definition": definition,
                             "pre_acc": pre, "post_acc": pre * (1 - final) if n else pre, "attack_flops": total,
                             "flops_per_iteration": total / n_its if n_its > 0 else np.nan,
                             "n_iterations": n_its, "early_stop": _scalar(ag, S.EARLY_STOP.encode()),
                             "defense_flops_cum": dcum})

    def asr_frame(self) -> pd.DataFrame:
        if not self.asr:
            return pd.DataFrame(columns=["run", "round", "attack", "n", "iteration", *CURVE])
        lens = np.array([len(a["asr"]) for _, a in self.asr])
        cols = {key: np.repeat(np.array([m[key] for m, _ in self.asr]), lens) for key in ("run", "round", "attack",
                                                                                        "n")}
        for key in ("iteration", *CURVE):
            cols[key] = np.concatenate([a[key] for _, a in self.asr])
        return pd.DataFrame(cols)


def _group_files(paths: list[Path]) -> list[tuple[Path, Sweep, set[str]]]:
    """Assign every file to a sweep (see module doc); checks every file before anything is read."""
    sweeps: list[Sweep] = []
    out = []
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        with ResultsFile(p).open() as f:
            try:
                config = yaml.safe_load(f.attrs["config"]) or {}
            except (KeyError, yaml.YAMLError):
                raise UserError(f"{p}: the stored config is missing or unreadable") from None
            names = {run for run, g in f.get(RUNS, {}).items()
                     if S.ROUNDS in g and any(is_committed(rg) for rg in g[S.ROUNDS].values())}
        if not names:
            raise UserError(f"{p} has no committed rounds (is its sweep still running?)")
        key = sweep_key_of(config)
        sw = next((s for s in sweeps if s.key == key and not (s.run_names & names)), None)
        if sw is None:
            sw = Sweep(p.stem, key, [], config)
            sweeps.append(sw)
        sw.files.append(p)
        sw.run_names |= names
        out.append((p, sw, names))
    _label_sweeps(sweeps)
    return out


def _attack_info(sweeps: list[Sweep]) -> pd.DataFrame:
    rows = []
    for s in sweeps:
        for a in s.config.get("attacks") or []:
            rounds = a.get("rounds", "all")  # attacks.N.rounds as configured ('all', a list or 'log:K')
            rows.append({"sweep": s.label, "attack": a.get("name"), "attack_type": a.get("type", "?"),
                         "placement": a.get("placement", "suffix"), "n_iterations": a.get("n_iterations"),
                         "ensemble": bool(a.get("ensemble", False)),
                         "rounds": " ".join(map(str, rounds)) if isinstance(rounds, list) else str(rounds)})
    return pd.DataFrame(rows, columns=["sweep", "attack", "attack_type", "placement", "n_iterations", "ensemble",
                                       "rounds"])


def load(paths: str | Path | list[str | Path]) -> Results:
    """Read and merge result files (see the module doc); raises UserError on unusable input."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no results files given")
    files = _group_files([Path(p) for p in paths])
    sweeps: list[Sweep] = []
    for _, sw, _ in files:
        if sw not in sweeps:
            sweeps.append(sw)
    rd = _Reader()
    for p, sw, _ in files:
        prefix = f"{sw.label}/" if len(sweeps) > 1 else ""
        with ResultsFile(p).open() as f:
            rd.read_file(p, f, sw, prefix)
    return _assemble(rd, sweeps)


def _assemble(rd: _Reader, sweeps: list[Sweep]) -> Results:
    runs = pd.DataFrame(rd.runs)
    runs = runs.sort_values(["sweep", "n_params", "model_label", "seed"], kind="stable").reset_index(drop=True)
    meta = runs[["run", "sweep", "task", "model_label", "n_params", "seed", "pretrain_flops"]]
    order = {r: i for i, r in enumerate(runs["run"])}

    def tidy(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        df = meta.merge(df, on="run", how="right", suffixes=("", "_round"))
        df["_o"] = df["run"].map(order)
        return df.sort_values(["_o", *keys], kind="stable").drop(columns="_o").reset_index(drop=True)

    rounds = tidy(pd.DataFrame(rd.rounds), ["round"])
    rounds = rounds.drop(columns=[c for c in rounds if c.endswith("_round")])
    for c in (S.HOSTS, S.DEVICE_KIND, S.DEVICE_NAMES):  # text: '' where a file did not record it (not NaN)
        if c in rounds:
            rounds[c] = rounds[c].fillna("")
    info = _attack_info(sweeps)
    attacks = tidy(pd.DataFrame(rd.attacks), ["round", "attack"])
    attacks = attacks.merge(info[["sweep", "attack", "attack_type", "ensemble"]], on=["sweep", "attack"], how="left")
    attacks["attack_type"] = attacks["attack_type"].fillna("?")
    asr = tidy(rd.asr_frame(), ["round", "attack", "iteration"])
    transfer = _transfer(rd.transfer, runs)
    attempts = pd.DataFrame(rd.attempts, columns=ATTEMPT_COLUMNS)
    return Results(runs, rounds, attacks, asr, transfer, sweeps, info, attempts)


def _transfer(parts: list[pd.DataFrame], runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["sweep", "round", "attack", "source", "target", "source_label", "target_label", "source_seed",
            "target_seed", "source_n_params", "target_n_params", "same_seed", "asr"]
    if not parts:
        return pd.DataFrame(columns=cols)
    t = pd.concat(parts, ignore_index=True)
    m = runs.set_index("run")
    t = t[t["source"].isin(m.index) & t["target"].isin(m.index)].copy()
    t["sweep"] = t["source"].map(m["sweep"])
    for side in ("source", "target"):
        t[f"{side}_label"] = t[side].map(m["model_label"])
        t[f"{side}_seed"] = t[side].map(m["seed"])
        t[f"{side}_n_params"] = t[side].map(m["n_params"])
    t["same_seed"] = t["source_seed"] == t["target_seed"]
    t = t.sort_values(["sweep", "round", "attack", "source_n_params", "source_label", "source_seed",
                       "target_n_params", "target_label", "target_seed"], kind="stable")
    return t[cols].reset_index(drop=True)
