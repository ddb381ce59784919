"""Launching without a cluster: bad submissions, --dry-run, job arrays, sbatch rendering and its quoting."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcrobust.cli import main
from hpcrobust.config import config_from_dict, slurm_minutes
from hpcrobust.errors import UserError
from hpcrobust.launch.plan import plan_tasks, shard_seeds
from hpcrobust.launch.safestop import SafeStop, StopAtSafePoint
from hpcrobust.launch.sbatch import Lines, render
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.reader import committed_rounds
from hpcrobust.sweep.hooks import Hooks
from tests.conftest import TINY, quickstart_cache, run_cli

# one run, round 0 only, one thread (no oversubscription on a shared machine): a few seconds
MINIMAL = ["seeds=[0]", "models=[builtin:xs]", "attacks=[]", "parallel.threads_per_rank=1"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """`hpcrobust ARGS` in this process (the same `main` as the console script, without 3 s of imports)."""

    def call(args: list[str], cwd: Path) -> Result:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main(args)
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)

    return call


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("text,minutes", [("60", 60), (60, 60), ("1:30", 2), ("01:30:00", 90), ("2-00", 2880),
                                          ("1-12:30", 2190), ("1-0:0:1", 1441), ("24:00:00", 1440)])
def test_slurm_time_formats(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("text", ["0", "00:00:00", "1:60", "25:99:00", "1-24", "abc", "", "-5", "1.5", "2 h"])
def test_impossible_time_strings(text):
    with pytest.raises(UserError, match="launch.timeout_min"):
        slurm_minutes(text)


@pytest.mark.parametrize("args,needle", [
    ([], "launch.slurm_partition: no partition given"),
    (["launch.slurm_partition=debug", "launch.gpus_per_node=-1"], "launch.gpus_per_node: -1 is below the minimum 0"),
    (["launch.slurm_partition=debug", "launch.timeout_min=25:99:00"], "'25:99:00' is not a time limit"),
    (["launch.slurm_partition=debug", "launch.timeout_min=soon"], "'soon' is not a time limit"),
    (["launch.slurm_partition=debug", "launch.timeout_min=0"], "not a positive time limit"),
    (['launch.slurm_partition="debug\\nrm -rf ~"'], "cannot go into an #SBATCH line"),
    (["launch.slurm_partition=debug", "launch.slurm_account=a\\b"], "launch.slurm_account"),
    (["launch.slurm_partition=debug", "launch.slurm_additional_parameters={'x y': 1}"], "not an sbatch option"),
    (["launch.slurm_partition=debug", "launch.gpus_per_node=2"], "one rank per GPU"),
    (["launch.slurm_partition=debug", "launch.array_over=shards", "launch.array_shards=3"], "only 2 seed(s)"),
    (["launch.slurm_partition=debug", "output=no/such/dir/out.h5"], "output folder does not exist"),
    (["launch.slurm_partition=debug", "finetune.lrr=1"], "unknown key 'finetune.lrr'"),
    (["--cluster", "local", "launch.tasks_per_node=2"], "--cluster local runs one rank"),
])
def test_bad_submission_is_one_line_and_submits_nothing(tiny, cli, args, needle):
    logs = tiny.parent / "logs"
    opts, args = (args[:2], args[2:]) if args[:1] == ["--cluster"] else ([], args)
    proc = cli(["submit", *opts, str(tiny), f"launch.folder={logs}/%j", *args], tiny.parent)
    assert needle in _one_line(proc)
    assert not logs.exists()  # submitit never ran: it creates the log folder first


def test_bad_submission_from_the_console_script(tiny):
    proc = run_cli(["submit", str(tiny), "launch.timeout_min=99:99"], cwd=tiny.parent, timeout=120)
    assert "'99:99' is not a time limit" in _one_line(proc)


def test_dry_run_prints_the_sbatch_script_and_writes_nothing(tiny, cli):
    logs = tiny.parent / "logs"
    proc = cli(["submit", "--dry-run", str(tiny), "launch.slurm_partition=gpu", "launch.tasks_per_node=4",
                    "launch.gpus_per_node=4", "launch.timeout_min=1:30:00", "launch.slurm_account=proj's",
                    "launch.array_over=seeds", f"launch.folder={logs}/%j"], tiny.parent)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --time=90", "#SBATCH --signal=USR2@90", "#SBATCH --array=0-1%2",
                 "#SBATCH --account='proj'\"'\"'s'", "--mpi=pmi2", "-m submitit.core._submit",
                 "export PYTHONPATH="):
        assert line in out, line
    assert f"seeds [1] -> {tiny.parent / 'out.seed1.h5'}" in out
    assert not logs.exists() and not list(tiny.parent.glob("*.h5"))


def test_a_boolean_sbatch_key_is_a_bare_flag(tiny, cli):
    extra = ["launch.slurm_partition=gpu", "launch.slurm_additional_parameters={exclusive: true, contiguous: false,"
             " mail-type: END}", f"launch.folder={tiny.parent}/logs/%j"]
    for cmd in (["submit", "--dry-run"], ["sbatch"]):
        proc = cli([*cmd, str(tiny), *extra], tiny.parent)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert "#SBATCH --exclusive" in lines and "#SBATCH --mail-type=END" in lines, cmd
        assert not any("True" in ln or "False" in ln or "contiguous" in ln for ln in lines if ln.startswith("#SBATCH"))


def test_array_tasks_over_seeds_and_shards():
    cfg = config_from_dict({"output": "/r/res.h5", "seeds": [0, 1, 2, 3, 4]}, ["launch.array_over=seeds"])
    tasks = plan_tasks(cfg, ["x.y=1"])
    assert [t.seeds for t in tasks] == [(0,), (1,), (2,), (3,), (4,)]
    assert [t.output.name for t in tasks] == [f"res.seed{k}.h5" for k in range(5)]
    assert tasks[3].overrides == ("x.y=1", "seeds=[3]", 'output="/r/res.seed3.h5"')
    assert tasks[3].extra == ("seeds=[3]", 'output="/r/res.seed3.h5"')
    assert shard_seeds([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    cfg = config_from_dict({"output": "/r/res.h5", "seeds": [0, 1, 2, 3, 4]},
                           ["launch.array_over=shards", "launch.array_shards=3"])
    tasks = plan_tasks(cfg, [])
    assert [t.seeds for t in tasks] == [(0, 1), (2, 3), (4,)] and tasks[2].output.name == "res.shard2.h5"
    # a path with YAML syntax in it survives the override round trip
    odd = "/tmp/a: b'c\"$(x) #y.h5"
    assert config_from_dict({}, ["output=" + json.dumps(odd)]).output == odd


def test_debug_cluster_runs_the_sweep_in_this_process(tiny):
    proc = run_cli(["submit", "--cluster", "debug", str(tiny), *MINIMAL, f"launch.folder={tiny.parent}/logs/%j"],
                   cwd=tiny.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done:" in proc.stdout
    assert committed_rounds(tiny.parent / "out.h5")["xs__seed0"] == {0}


# ---------------------------------------------------------------- sbatch templates

HOSTILE = ["it's", 'say "hi"', "$(touch PWNED_subst)", "`touch PWNED_tick`", "a\nb; touch PWNED_nl", "x\\y",
           "${HOME}", "*", "-n 3", "'; touch PWNED_q; '"]


def test_render_quotes_values_and_refuses_unsafe_directives():
    text = render("#SBATCH --job-name={{a}}\n{{opts}}\necho {{a}} {{many}}\n",
                  {"a": "x y", "many": ["1", "$(z)"], "opts": Lines(("#SBATCH --qos=q",))})
    assert text == "#SBATCH --job-name='x y'\n#SBATCH --qos=q\necho 'x y' 1 '$(z)'\n"
    for bad in ("a\nb", "a\rb", "a\\b", "a\x00b"):
        with pytest.raises(UserError, match="cannot go into an #SBATCH line"):
            render("#SBATCH --job-name={{a}}\n", {"a": bad})
    with pytest.raises(UserError, match="unknown placeholder"):
        render("echo {{nope}}\n", {})


def _sandbox(tmp: Path) -> dict:
    """A PATH whose srun and scontrol only record their arguments (NUL-separated): nothing real runs."""
    bin_dir = tmp / "fakebin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > "$SANDBOX_OUT/{name}.args"\n')
        stub.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SANDBOX_OUT": str(tmp), "SLURM_JOB_ID": "4242",
            "SLURM_ARRAY_TASK_ID": "1"}


@pytest.mark.parametrize("array", [False, True])
def test_sbatch_values_round_trip_without_running(tmp_path, cli, array):
    workdir = tmp_path / "work dir 'q' $(touch PWNED_dir) `x`"
    workdir.mkdir()
    config = workdir / "my config $(touch PWNED_cfg).yaml"
    config.write_text(TINY.read_text())
    overrides = [f"models.0.label={v}" for v in HOSTILE[:2]] + ["task.name=spam"]
    overrides += [f"task.path={v}" for v in HOSTILE[2:]]  # a file task's path: any text
    extra = ["launch.array_over=seeds"] if array else []
    extra += ["launch.slurm_partition=p'$(touch PWNED_part)`x`", "launch.slurm_srun_args=['--mpi=pmi2', '$(id)']",
              f"launch.folder={tmp_path}/logs/%j"]
    proc = cli(["sbatch", str(config), *overrides, *extra], workdir)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    directives = [ln for ln in proc.stdout.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --partition='p'\"'\"'$(touch PWNED_part)`x`'" in directives
    env = {**os.environ, **_sandbox(tmp_path)}
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    argv = (tmp_path / "srun.args").read_text().split("\0")[:-1]
    run_args = argv[argv.index("hpcrobust.cli") + 1:]
    expected = ["run", str(config), *overrides, *extra]
    if array:
        expected += ["seeds=[1]", f"output={json.dumps(str(workdir / 'out.seed1.h5'))}"]
    assert argv[:2] == ["--mpi=pmi2", "$(id)"]
    assert run_args == expected
    assert not [p for p in tmp_path.rglob("PWNED*")] and not list(Path.cwd().glob("PWNED*"))


def test_sbatch_refuses_a_newline_in_an_sbatch_line(tiny, cli):
    proc = cli(["sbatch", str(tiny), 'launch.slurm_qos="normal\\n#SBATCH --x"'], tiny.parent)
    assert "launch.slurm_qos" in _one_line(proc) and not proc.stdout


def test_sbatch_quotes_the_config_and_keeps_time_strings(tiny, cli):
    proc = cli(["sbatch", str(tiny), "launch.timeout_min=1:30:00"], tiny.parent)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --time=90" in proc.stdout
    assert shlex.quote(str(tiny)) in proc.stdout


def test_gpu_example_config_renders_one_rank_per_gpu(tmp_path, cli):
    example = Path(__file__).resolve().parents[1] / "configs" / "slurm_gpu_example.yaml"
    cache = f"family.cache_dir={quickstart_cache()}"  # submit checks tokenizers: the default family, built once
    proc = cli(["submit", "--dry-run", str(example), f"launch.folder={tmp_path}/logs/%j", cache], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=my_project", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --time=480", "#SBATCH --signal=USR2@300",
                 "#SBATCH --array=0-3%4"):
        assert line in proc.stdout, line
    proc = cli(["sbatch", str(example), "launch.array_over=none", cache], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --gpus-per-node=4" in proc.stdout and "--mpi=pmi2" in proc.stdout


# ---------------------------------------------------------------- stopping at a safe point

def test_signal_stops_the_sweep_right_after_the_next_commit():
    hooks = Hooks()
    ctx = SimpleNamespace(layout=SimpleNamespace(world=Comm(None)))  # all the hook reads of the sweep
    fired: list[int] = []
    with SafeStop(30.0, on_timeout=lambda: fired.append(1)) as stop:
        stop.attach(hooks)
        hooks.fire("round_committed", ctx, 0, 2)  # no signal yet: the sweep goes on
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert stop.requested == "SIGUSR2"
        hooks.fire("round_started", ctx, 1)  # the round in progress is not interrupted
        with pytest.raises(StopAtSafePoint):  # every rank stops right after the next commit
            hooks.fire("round_committed", ctx, 1, 2)
    assert not fired and signal.getsignal(signal.SIGUSR2) is not stop._on_signal


def test_no_commit_within_the_grace_period_requeues_mid_round():
    fired: list[int] = []
    with SafeStop(0.1, on_timeout=lambda: fired.append(1)):
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
    assert fired == [1]
