"""Experiment trackers, offline: what reaches wandb's offline files and an MLflow store equals what the results
file holds, a stopped and resumed sweep continues the same tracker run, and a missing extra is one line."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from hpcrobust.store.reader import load, open_results
from hpcrobust.store.results import ResultsFile
from hpcrobust.tracking.records import tracker_run_id
from tests.conftest import run_cli

# One size, one seed, round 0 plus one adversarial round: the smallest sweep with two rounds to track.
SWEEP = ["seeds=[0]", "models=[builtin:xs]", "parallel.threads_per_rank=1", "--quiet",
         "attacks=[{name: rt, type: random_token, n_examples: 3, n_iterations: 5, n_attack_tokens: 3}]",
         "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 3}]", "advtrain.rounds=1",
         "advtrain.attack=rt_train", "advtrain.n_new_examples=4", "advtrain.max_examples=16",
         "advtrain.iterations_start=3", "advtrain.iterations_end=3"]
RUN = "xs__seed0"


def _need(module: str) -> None:
    """The tracker extras: CI installs them (.ci/run), so there a missing one fails; elsewhere it skips."""
    if os.environ.get("CI"):
        importlib.import_module(module)
    else:
        pytest.importorskip(module, reason=f"pip install -e '.[{module}]' to test the {module} tracker")


def _stop_then_resume(tiny, extra: list[str], env: dict | None = None) -> None:
    first = run_cli(["run", str(tiny), *SWEEP, *extra, "debug.stop_after_round=0"], cwd=tiny.parent, env=env)
    assert first.returncode == 3, first.stderr
    rest = run_cli(["run", str(tiny), *SWEEP, *extra], cwd=tiny.parent, env=env)
    assert rest.returncode == 0, rest.stderr
    noise = [ln for ln in rest.stderr.splitlines() if ln.strip() and not ln.startswith("sweep:")]  # tqdm's bar
    assert not noise, rest.stderr  # quiet: nothing from the tracker libraries either


def _expected(out):
    """(tracker run id, the file's rounds table, {round: asr curve of rt})."""
    with open_results(out) as f:
        sh = f.attrs["science_hash"]
        curves = {r: f[f"runs/{RUN}/rounds/{r:04d}/attacks/rt/asr"][()] for r in (0, 1)}
    return tracker_run_id(sh, ResultsFile(out).path, RUN), load(out), curves


def test_wandb_offline_run_continues_after_a_stop(tiny):
    _need("wandb")
    _stop_then_resume(tiny, ["tracking.backend=wandb", "tracking.dir=wb", "output=out.h5", "experiment=exp-w"])
    from tests.wandb_offline import read_offline_runs

    rid, df, curves = _expected(tiny.parent / "out.h5")
    with open_results(tiny.parent / "out.h5") as f:  # the experiment's name is stored in the file
        assert f.attrs["experiment"] == "exp-w" and "experiment: exp-w" in f.attrs["config"]
    segments = read_offline_runs(tiny.parent / "wb")
    assert len(segments) == 2  # one offline folder per process, both for the same run id
    assert {(s.run_id, s.project, s.name, s.group) for s in segments} == {(rid, "exp-w", f"exp-w/{RUN}", "exp-w")}
    rows = [row for s in segments for row in s.history]
    assert sorted(row["_step"] for row in rows) == [0, 1]  # round 0 before the stop, round 1 after: no repeat
    for seg in segments:
        for row in seg.history:
            r = row["_step"]
            assert row["round"] == r
            assert row["clean_accuracy"] == df[df["round"] == r]["clean_accuracy"].item()
            assert row["attack/rt/asr"] == curves[r][-1]
            table = seg.table(row, "attack/rt/asr_curve")
            assert table["columns"] == ["iteration", "asr", "attack_flops"]
            np.testing.assert_array_equal([d[1] for d in table["data"]], curves[r])


def _mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_run_continues_after_a_stop(tiny):
    """The default store: a SQLite file beside the results file."""
    _need("mlflow")
    _stop_then_resume(tiny, ["tracking.backend=mlflow", "output=out.h5"])
    rid, df, curves = _expected(tiny.parent / "out.h5")
    client, runs = _mlflow_runs(f"sqlite:///{tiny.parent / 'mlflow.db'}", "tiny")
    assert len(runs) == 1  # the resumed sweep found its run instead of making a second one
    run = runs[0]
    assert run.data.tags["hpcrobust_run_id"] == rid and run.info.run_name == f"tiny/{RUN}"
    assert run.info.status == "FINISHED" and run.data.params["task.name"] == "password_match"
    assert not any(k.startswith("tracking.") for k in run.data.params)
    hist = client.get_metric_history(run.info.run_id, "clean_accuracy")
    assert sorted((m.step, m.value) for m in hist) == [(r, df[df["round"] == r]["clean_accuracy"].item())
                                                        for r in (0, 1)]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "defense_flops_cum")) == [0, 1]
    for r in (0, 1):
        curve = client.get_metric_history(run.info.run_id, f"asr_curve/rt/round_{r:04d}")
        np.testing.assert_array_equal([m.value for m in sorted(curve, key=lambda m: m.step)], curves[r])


def test_mlflow_file_store(tiny, tmp_path):
    """A plain MLflow file store (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for it), read back from disk."""
    _need("mlflow")
    store = tmp_path / "mlruns"
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    proc = run_cli(["run", str(tiny), *SWEEP, "tracking.backend=mlflow", f"tracking.uri=file://{store}",
                    "tracking.project=robustness", "output=fs.h5"], cwd=tiny.parent, env=env)
    assert proc.returncode == 0, proc.stderr
    _, df, _ = _expected(tiny.parent / "fs.h5")
    lines = list(store.glob("*/*/metrics/clean_accuracy"))
    assert len(lines) == 1  # one experiment, one run, written as MLflow's plain metric files
    steps = {int(step): float(value) for _ts, value, step in (ln.split() for ln in lines[0].read_text().splitlines())}
    assert steps == {r: df[df["round"] == r]["clean_accuracy"].item() for r in (0, 1)}


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_a_tracker_extra_that_is_not_installed_is_one_line(tiny, tmp_path, backend):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / f"{backend}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{backend}'\")\n")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)}
    for cmd in (["run"], ["submit", "--cluster", "local", "--dry-run"]):
        proc = run_cli([*cmd, str(tiny), "tracking.backend=" + backend, "output=never.h5"], cwd=tiny.parent, env=env)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"tracking.backend: {backend} is not installed" in proc.stderr
        assert f"pip install 'hpcrobust[{backend}]'" in proc.stderr
    assert sorted(p.name for p in tiny.parent.iterdir()) == ["shadow", "tiny.yaml"]  # nothing written


def test_an_unusable_tracker_store_is_one_line_before_the_sweep(tiny):
    _need("mlflow")
    proc = run_cli(["run", str(tiny), *SWEEP, "tracking.backend=mlflow", "tracking.uri=bogus://nowhere",
                    "output=never.h5"], cwd=tiny.parent)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "tracking.uri: MLflow cannot use bogus://nowhere" in proc.stderr
    assert not list(tiny.parent.glob("never.h5*"))


@pytest.mark.parametrize("override,needle", [
    (["tracking.backend=comet"], "tracking.backend: 'comet' is not one of none, wandb, mlflow"),
    (["tracking.backend=wandb", "tracking.uri=x"], "tracking.uri: only for tracking.backend=mlflow"),
    (["tracking.dir=x"], "tracking.dir: only for tracking.backend=wandb"),
    (["tracking.backend=mlflow", "tracking.uri=postgresql://me:secret@db/mlflow"], "tracking.uri: holds a password"),
])
def test_tracking_keys_are_checked(override, needle):
    from hpcrobust.config import config_from_dict
    from hpcrobust.errors import UserError

    with pytest.raises(UserError, match=needle):
        config_from_dict({}, override)


def test_only_the_writer_rank_logs_and_ids_are_stable(tmp_path):
    from hpcrobust.sweep.hooks import Hooks
    from hpcrobust.tracking import attach
    from hpcrobust.tracking.config import TrackingConfig

    a = tracker_run_id("abc", tmp_path / "r.h5", RUN)
    assert a == tracker_run_id("abc", tmp_path / "r.h5", RUN) != tracker_run_id("abc", tmp_path / "r.h5", "s__seed0")
    assert a != tracker_run_id("abd", tmp_path / "r.h5", RUN) != tracker_run_id("abc", tmp_path / "q.h5", RUN)
    hooks = Hooks()
    hooks.on("round_committed", lambda *a: (_ for _ in ()).throw(SystemExit(3)))  # a stop attached earlier
    tracker = attach(hooks, TrackingConfig(backend="wandb"), "exp", tmp_path / "r.h5")
    assert hooks.callbacks["round_committed"][0] == tracker.round_committed  # runs before any stop
    tracker.round_committed(None, 0, 1)  # not connected (every rank but the writer): nothing happens
    assert tracker.backend is None


def test_two_ranks_log_each_round_once(tiny):
    """Under mpiexec every rank fires the hooks; only world rank 0 logs, and it logs every run of the round."""
    _need("mlflow")
    sweep = [a if a != "seeds=[0]" else "seeds=[0, 1]" for a in SWEEP]
    proc = run_cli(["run", str(tiny), *sweep, "tracking.backend=mlflow", "output=two.h5"], ranks=2, cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    client, runs = _mlflow_runs(f"sqlite:///{tiny.parent / 'mlflow.db'}", "tiny")
    assert sorted(r.data.tags["hpcrobust_run"] for r in runs) == ["xs__seed0", "xs__seed1"]
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "clean_accuracy")) == [0, 1]


def test_queue_logs_every_groups_rounds_once_with_their_ensemble(tiny):
    """Under parallel.schedule=queue world rank 0 forwards what every group committed, each round once it holds
    its ensemble attack (added to the round after the round's own commit), across a stop and a resume."""
    _need("mlflow")
    ens = ("{name: ens, type: gcg, ensemble: true, n_examples: 2, n_iterations: 2, n_attack_tokens: 3,"
           " search_width: 8, topk: 16}")
    sweep = [a for a in SWEEP if not a.startswith(("models=", "attacks="))] + [
        "models=[builtin:xs, builtin:s]", "parallel.schedule=queue", "tracking.backend=mlflow", "output=q.h5",
        f"attacks=[{{name: rt, type: random_token, n_examples: 3, n_iterations: 5, n_attack_tokens: 3}}, {ens}]"]
    first = run_cli(["run", str(tiny), *sweep, "debug.stop_after_round=0"], ranks=2, cwd=tiny.parent)
    assert first.returncode == 3, first.stderr
    rest = run_cli(["run", str(tiny), *sweep], ranks=2, cwd=tiny.parent)
    assert rest.returncode == 0, rest.stderr
    df = load(tiny.parent / "q.h5")
    client, runs = _mlflow_runs(f"sqlite:///{tiny.parent / 'mlflow.db'}", "tiny")
    assert sorted(r.data.tags["hpcrobust_run"] for r in runs) == ["s__seed0", "xs__seed0"]
    with open_results(tiny.parent / "q.h5") as f:
        for r in runs:
            key = r.data.tags["hpcrobust_run"]
            for metric in ("clean_accuracy", "attack/rt/asr", "attack/ens/asr"):
                hist = client.get_metric_history(r.info.run_id, metric)
                assert sorted(m.step for m in hist) == [0, 1], (key, metric)  # every round, once
            ens_asr = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "attack/ens/asr")}
            acc = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "clean_accuracy")}
            for rnd in (0, 1):
                assert ens_asr[rnd] == f[f"runs/{key}/rounds/{rnd:04d}/attacks/ens/asr"][-1]
                assert acc[rnd] == df[(df["run"] == key) & (df["round"] == rnd)]["clean_accuracy"].item()
