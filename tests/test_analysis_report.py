"""`hpcrobust analyze`: every figure rendered and not blank, the same tables from split files, one-line errors."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.analysis import figures, load
from hpcrobust.analysis.cli import main
from hpcrobust.analysis.synthetic import SynthAttack, SynthSize, SynthSpec, default_sizes, write_synthetic
from tests.conftest import ROOT

FIGURES = ["fig1_asr_vs_size", "fig2_attack_scaling", "fig2b_attack_scaling_slopes", "fig3_advtrain_rounds",
           "fig3b_advtrain_defense_flops", "fig3c_advtrain_transfer", "fig4_asr_vs_size_by_round",
           "fig5_offense_defense", "fig6_transfer_matrix"]
TABLES = ["table7a_pretrain_flops", "table7b_hyperparameters", "table7c_never_reached"]
PER_SIZE = ["fig2_attack_scaling", "fig3_advtrain_rounds", "fig3b_advtrain_defense_flops", "fig3c_advtrain_transfer",
            "fig5_offense_defense"]  # figures with one line per model size in every panel


def quickstart_like() -> SynthSpec:
    """The quickstart's shape: three sizes, one seed, round 0 only, GCG / RandomToken / BEAST."""
    return SynthSpec(sizes=default_sizes(3), seeds=[0], rounds=0, n_examples=32,
                     attacks=[SynthAttack("gcg_suffix", "gcg", 10), SynthAttack("rt", "random_token", 128),
                              SynthAttack("beast", "beast", 8)])


def small(**kw) -> SynthSpec:
    return SynthSpec(**{"seeds": [0, 1], "rounds": 2, "n_examples": 40, **kw})


def not_blank(png: Path) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    ink = (img < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    return img.std() > 0.05 and ink > 0.02


def test_quickstart_shaped_output_gets_every_figure_and_report(tmp_path):
    path = write_synthetic(tmp_path / "results.h5", quickstart_like())
    assert main([str(path), "--out", str(tmp_path / "report"), "--bootstrap", "100"]) == 0
    out = tmp_path / "report"
    for name in FIGURES:
        assert not_blank(out / f"{name}.png"), name
        assert (out / f"{name}.csv").stat().st_size > 0
    for name in TABLES:
        assert (out / f"{name}.csv").is_file()
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name}.png)" in md and f"({name}.csv)" in md
    assert "wilson95" in (out / "fig1_asr_vs_size.csv").read_text()  # one seed: Wilson interval, not min-max
    assert "no adversarial-training rounds" in md  # round 0 has no defense compute to put on a log axis


def test_axes_are_labelled_and_there_is_one_line_per_size(tmp_path):
    """Sizes whose ASR reaches 1% and 2% in every round, so every offense/defense panel has every size."""
    sizes = [SynthSize("a", 10**5, a=-2.4, b=0.8, d=0.4), SynthSize("b", 10**6, a=-2.6, b=1.0, d=1.0),
             SynthSize("c", 10**7, a=-2.3, b=1.2, d=1.5)]
    spec = small(sizes=sizes, seeds=[0, 1, 2], rounds=3, n_examples=2000, seed_noise=0.05, slope_noise=0.05)
    res = load(write_synthetic(tmp_path / "r.h5", spec))
    for fig in figures(res, targets=(0.01, 0.02), n_boot=50):
        axes = [ax for ax in fig.fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        assert axes, fig.name
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (fig.name, ax.get_title())
            if fig.name in PER_SIZE:
                labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
                assert [lab.split(" (")[0] for lab in labels] == ["a", "b", "c"], (fig.name, labels)
        fig.fig.clf()


def test_split_per_seed_files_give_the_same_tables_as_one_file(tmp_path):
    spec = small(seeds=[0, 1, 2])
    one = write_synthetic(tmp_path / "all.h5", spec)
    parts = [write_synthetic(tmp_path / f"seed{s}.h5", small(seeds=[s])) for s in (0, 1, 2)]
    assert main([str(one), "--out", str(tmp_path / "a"), "--bootstrap", "200"]) == 0
    assert main([*map(str, parts[::-1]), "--out", str(tmp_path / "b"), "--bootstrap", "200"]) == 0
    csvs = sorted(p.name for p in (tmp_path / "a").glob("*.csv"))
    assert len(csvs) == len(list((tmp_path / "b").glob("*.csv"))) >= 15
    for name in csvs:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name


def _one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpcrobust: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    good = write_synthetic(tmp_path / "good.h5", small(rounds=0, transfer=False))
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    assert "is not an HDF5 file" in _one_line(capsys, [str(text), "--out", str(tmp_path / "o1")])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "someone-else"
        f["x"] = np.arange(3)
    assert "not an hpcrobust results file" in _one_line(capsys, [str(other), "--out", str(tmp_path / "o2")])
    empty = write_synthetic(tmp_path / "empty.h5", small(rounds=0, transfer=False))
    with h5py.File(empty, "r+") as f:
        for run in f["runs"].values():
            run["rounds/0000"].attrs["committed"] = 0
    assert "no committed rounds" in _one_line(capsys, [str(good), str(empty), "--out", str(tmp_path / "o3")])
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert "is not a folder" in _one_line(capsys, [str(good), "--out", str(a_file)])
    assert a_file.read_text() == "x"
    assert "not found" in _one_line(capsys, [str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o4")])
    assert "target ASR" in _one_line(capsys, [str(good), "--out", str(tmp_path / "o5"), "--targets", "150"])
    assert "required" in _one_line(capsys, [str(good)])
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))  # nothing written on bad input


def test_add_parser_works_under_the_main_cli_parser_class(tmp_path):
    import argparse

    from hpcrobust.analysis import cli

    class Strict(argparse.ArgumentParser):  # as hpcrobust/cli.py: errors become UserError
        def error(self, message):
            from hpcrobust.errors import UserError

            raise UserError(message)

    top = Strict(prog="hpcrobust")
    sub = top.add_subparsers(dest="command", parser_class=Strict)
    cli.add_parser(sub)
    args = top.parse_args(["analyze", "x.h5", "y.h5", "--out", "d", "--targets", "1", "10%"])
    assert (args.command, args.files, args.out, args.targets) == ("analyze", ["x.h5", "y.h5"], "d", [0.01, 0.1])
    path = write_synthetic(tmp_path / "r.h5", small(rounds=0, transfer=False, seeds=[0]))
    args = top.parse_args(["analyze", str(path), "--out", str(tmp_path / "rep"), "--bootstrap", "50"])
    assert cli.run(args) == 0 and (tmp_path / "rep" / "report.md").is_file()


def test_every_paper_script_draws_its_figure(tmp_path, monkeypatch):
    path = write_synthetic(tmp_path / "r.h5", small(sizes=default_sizes(2), seeds=[0], rounds=1))
    scripts = sorted((ROOT / "analysis").glob("fig*.py"))
    assert [p.stem for p in scripts] == sorted(FIGURES)
    for script in scripts:
        monkeypatch.setattr(sys, "argv", [str(script), str(path), "--out", str(tmp_path / "out")])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
        assert done.value.code == 0, script.name
        assert not_blank(tmp_path / "out" / f"{script.stem}.png"), script.name


@pytest.mark.slow
def test_real_quickstart_output(tmp_path):
    """On a real quickstart results file (HPCROBUST_QUICKSTART_RESULTS, e.g. from test_quickstart.py)."""
    real = os.environ.get("HPCROBUST_QUICKSTART_RESULTS", "")
    if not real or not Path(real).is_file():
        pytest.skip("set HPCROBUST_QUICKSTART_RESULTS to a quickstart results.h5")
    assert main([real, "--out", str(tmp_path / "report")]) == 0
    for name in FIGURES:
        assert not_blank(tmp_path / "report" / f"{name}.png"), name


def test_report_states_definitions_early_stop_and_size_regression(tmp_path):
    """The report says which ASR it uses, warns when a file stopped early or lacks asr_current, gives the
    regression of slope on log10(parameters), and table7a shows 6·N·D's N and D."""
    import pandas as pd

    atts = [SynthAttack("gcg", "gcg", 20), SynthAttack("rt", "random_token", 20, early_stop=True)]
    spec = small(seeds=[0], rounds=1, n_examples=200, attacks=atts, transfer=False)
    assert main([str(write_synthetic(tmp_path / "r.h5", spec)), "--out", str(tmp_path / "a"),
                 "--bootstrap", "50"]) == 0
    md = (tmp_path / "a" / "report.md").read_text()
    assert "current* candidate at iteration t" in md and "iterations ≥ 1" in md
    early = md.split("**Early stopping:**")[1].split("\n")[0]
    assert early.startswith(" for attack `rt`, examples stopped") and "`gcg`" not in early
    assert "no `asr_current`" not in md
    reg = pd.read_csv(tmp_path / "a" / "fig2b_attack_scaling_slopes_regression.csv")
    assert set(reg["attack"]) == {"gcg", "rt"} and (reg["n_sizes"] == 3).all()
    gcg = reg[(reg["attack"] == "gcg") & (reg["round"] == 0)].iloc[0]
    assert f"gcg: slope = {gcg['intercept']:.3f} {gcg['slope_per_decade']:+.3f} × log10(parameters)" in md
    pre = pd.read_csv(tmp_path / "a" / "table7a_pretrain_flops.csv")
    assert (pre["pretrain_n"] == pre["n_params"]).all() and (pre["pretrain_tokens"] == spec.pretrain_tokens).all()
    assert np.allclose(pre["pretrain_flops"], 6 * pre["pretrain_n"] * pre["pretrain_tokens"])
    assert "pretrain_tokens" in md
    fits = pd.read_csv(tmp_path / "a" / "fig2_attack_scaling_fits.csv")
    assert fits.loc[fits["attack"] == "rt", "early_stop"].all() and not fits.loc[fits["attack"] == "gcg",
                                                                                  "early_stop"].any()
    old = small(seeds=[0], rounds=0, n_examples=200, attacks=atts[:1], transfer=False, without_v2=True)
    assert main([str(write_synthetic(tmp_path / "old.h5", old)), "--out", str(tmp_path / "b"),
                 "--bootstrap", "50"]) == 0
    md = (tmp_path / "b" / "report.md").read_text()
    assert "no `asr_current` for attack `gcg`" in md and "**Early stopping:**" not in md
