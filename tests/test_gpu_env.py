"""`parallel.device: auto` on a node that SLURM gave GPUs, where torch sees no CUDA (a CPU-only torch, a broken
driver): one line and exit 2 before any work, instead of a silent CPU run many times slower."""

from __future__ import annotations

import pytest
import torch

from hpcrobust.errors import UserError
from hpcrobust.parallel.config import ParallelConfig
from hpcrobust.parallel.layout import GPU_ENV, check_parallel
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees CUDA here: nothing to refuse")


@pytest.fixture
def no_gpu_env(monkeypatch):
    for name in GPU_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name,value", [("SLURM_JOB_GPUS", "0,1"), ("SLURM_STEP_GPUS", "2"),
                                        ("SLURM_GPUS_ON_NODE", "4"), ("CUDA_VISIBLE_DEVICES", "0")])
def test_auto_refuses_a_node_with_gpus_that_torch_cannot_see(no_gpu_env, name, value):
    no_gpu_env.setenv(name, value)
    with pytest.raises(UserError, match=f"parallel.device: auto: this node has GPUs \\({name}={value}\\)"):
        check_parallel(ParallelConfig(device="auto"), 1)
    check_parallel(ParallelConfig(device="cpu"), 1)  # asked for the CPU: fine


@pytest.mark.parametrize("name,value", [("CUDA_VISIBLE_DEVICES", ""), ("CUDA_VISIBLE_DEVICES", "-1"),
                                        ("SLURM_GPUS_ON_NODE", "0"), ("SLURM_JOB_GPUS", "NoDevFiles")])
def test_auto_runs_on_the_cpu_where_no_gpu_was_given(no_gpu_env, name, value):
    no_gpu_env.setenv(name, value)
    check_parallel(ParallelConfig(device="auto"), 1)


def test_the_cli_says_it_in_one_line_before_any_work(tiny, family_cache):
    proc = run_cli(["run", str(tiny), "seeds=[0]", "models=[builtin:xs]", "attacks=[]"], cwd=tiny.parent,
                   env={"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcrobust: error:") and "SLURM_JOB_GPUS=0" in lines[0], \
        proc.stderr
    assert "parallel.device: cpu" in lines[0]
    assert not (tiny.parent / "out.h5").exists()
