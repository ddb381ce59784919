"""Shared test fixtures: a tiny built-in family built once per session, and CLI runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hpcrobust_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("hpcrobust")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcrobust.cli"]


def mpiexec() -> str:
    """The mpiexec that belongs to this environment's MPI (the pip MPICH wheel puts one beside python)."""
    local = Path(sys.executable).with_name("mpiexec")
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec in this environment")
    return found


def quickstart_cache() -> Path:
    """The real (default) family recipe's cache, outside the test tree so that CI builds it once for every test
    that needs the default family (the quickstart, the example configs)."""
    return Path(os.environ.get("HPCROBUST_QUICKSTART_CACHE", str(Path.home() / ".cache" / "hpcrobust")))


def run_cli(args: list[str], ranks: int = 0, cwd: Path | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = hpcrobust_cmd() + args
    if ranks:
        cmd = [mpiexec(), "-n", str(ranks)] + cmd
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def family_cache(tmp_path_factory) -> Path:
    """Build the tiny test family once (a few seconds) and share it with every subprocess."""
    cache = Path(os.environ.get("HPCROBUST_TEST_CACHE", tmp_path_factory.mktemp("family-cache")))
    os.environ["HPCROBUST_CACHE"] = str(cache)
    from hpcrobust.config import load_config
    from hpcrobust.models.family import ensure_built

    cfg = load_config(TINY)
    ensure_built(cfg.family, ["xs", "s"], show_progress=False)
    return cache


def reference_sweep(folder: Path, args: list[str], output: str = "ref.h5", ranks: int = 0) -> Path:
    """Run the tiny config with `args` once in `folder` (a module fixture's): the file other tests compare with."""
    (folder / "tiny.yaml").write_text(TINY.read_text())
    proc = run_cli(["run", "tiny.yaml", *args, f"output={output}", "--quiet"], ranks=ranks, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / output


@pytest.fixture
def tiny(tmp_path, family_cache) -> Path:
    """A copy of the tiny config in a fresh folder; runs write their results there."""
    dst = tmp_path / "tiny.yaml"
    dst.write_text(TINY.read_text())
    return dst
