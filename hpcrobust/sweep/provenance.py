"""Where, and with what code, a sweep's numbers were computed, and how many device-hours they took.

A results file may be filled by several attempts (a crash, a requeue, a resume on other nodes of a shared
cluster), so provenance is recorded at three levels (store/schema.py declares every name):

- the header (root attrs): the software of the attempt that created the file;
- /attempts/<AAAA>/: each attempt's software, hosts, devices, and the device-hours it has held its
  devices for, rewritten with every commit it makes (so a killed attempt keeps its last count);
- every round: the attempt that computed it, its group's hosts and devices, and device-hours =
  wall_time x the devices of the run's group (GPU-hours on GPUs, core-hours on CPU).

Collecting it never fails a sweep: a git that is missing, refuses or hangs gives '' and -1.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from hpcrobust import __version__
from hpcrobust.parallel.collectives import gather_rank_facts
from hpcrobust.parallel.layout import Layout
from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record

GIT_TIMEOUT_S = 10.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds hpcrobust/ (a checkout, or site-packages)


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None when it fails or takes longer than GIT_TIMEOUT_S (then it is killed with anything it
    started, so nothing holds the pipe open)."""
    try:
        proc = subprocess.Popen(["git", "-C", str(root), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    except OSError:
        return None
    try:
        out, _ = proc.communicate(timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        return None
    return out if proc.returncode == 0 else None


def git_state(root: Path = PACKAGE_ROOT) -> tuple[str, int]:
    """(commit, dirty) of the git checkout that holds the package, or ('', -1) when it is not in one (installed
    into site-packages, a submitit snapshot) or git does not answer. Dirty means tracked files differ from the
    commit; untracked files (results, checkpoints written into the checkout) do not count."""
    if not (root / ".git").exists():
        return "", -1
    head = _git(root, "rev-parse", "HEAD")
    if head is None or not head.strip():
        return "", -1
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head.strip(), -1 if status is None else int(bool(status.strip()))


def software() -> dict[str, str | int]:
    """The versions of what computed the numbers (see S.SOFTWARE)."""
    import transformers

    commit, dirty = git_state()
    return {S.HPCROBUST_VERSION: __version__, S.GIT_COMMIT: commit, S.GIT_DIRTY: dirty,
            S.PYTHON_VERSION: platform.python_version(), S.TORCH_VERSION: str(torch.__version__),
            S.CUDA_VERSION: torch.version.cuda or "", S.TRANSFORMERS_VERSION: transformers.__version__}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _affinity() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class RankFacts:
    """What one rank runs on."""

    group: int
    host: str
    kind: str  # "gpu" or "cpu"
    name: str  # GPU or CPU model
    device: str  # a GPU's identity (its UUID where torch knows it); "" on CPU
    threads: int
    cores: tuple[int, ...]  # the CPU cores this rank may run on


def rank_facts(layout: Layout) -> RankFacts:
    host = socket.gethostname()
    if layout.device.type == "cuda":
        idx = layout.device.index if layout.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        ident = str(getattr(props, "uuid", "") or f"{host}/{os.environ.get('CUDA_VISIBLE_DEVICES', '')}/{idx}")
        return RankFacts(layout.group_index, host, "gpu", props.name, ident, layout.threads, _affinity())
    return RankFacts(layout.group_index, host, "cpu", cpu_name(), "", layout.threads, _affinity())


def _joined(values) -> str:
    return ",".join(dict.fromkeys(values))


def count_devices(facts: list[RankFacts]) -> int:
    """Distinct GPUs; on CPU the ranks' threads per host, at most the cores they may run on."""
    if any(f.kind == "gpu" for f in facts):
        return len({f.device for f in facts if f.kind == "gpu"})
    total = 0
    for host in dict.fromkeys(f.host for f in facts):
        mine = [f for f in facts if f.host == host]
        total += min(sum(f.threads for f in mine), len({c for f in mine for c in f.cores}) or 1)
    return total


def describe(facts: list[RankFacts]) -> dict[str, str | int]:
    """The attributes a set of ranks shares with a round or an attempt: hosts, devices, their count."""
    return {S.HOSTS: _joined(f.host for f in facts),
            S.DEVICE_KIND: "gpu" if any(f.kind == "gpu" for f in facts) else "cpu",
            S.DEVICE_NAMES: _joined(f.name for f in facts), S.N_DEVICES: count_devices(facts)}


@dataclass
class Attempt:
    """This process group's go at the sweep; `software` is known on world rank 0 only (the writer)."""

    index: int
    started: float
    facts: list[RankFacts]
    n_groups: int
    software: dict = field(default_factory=dict)
    run_rounds: int = 0

    @classmethod
    def begin(cls, layout: Layout, index: int, started: float) -> Attempt:
        """Collective: every rank describes itself to every other."""
        facts = gather_rank_facts(layout.world, rank_facts(layout))
        return cls(index, started, facts, layout.n_groups, software() if layout.is_root else {})

    def header(self) -> dict:
        """What the results file's root gets when this attempt creates it."""
        return {S.CREATED: utc(self.started), **self.software}

    def round_attrs(self, group: int, wall_time: float) -> dict:
        """A round computed by group `group` in `wall_time` seconds."""
        mine = [f for f in self.facts if f.group == group]
        d = describe(mine)
        return {S.ATTEMPT: self.index, **d, S.WORLD_SIZE: len(self.facts), S.GROUP_SIZE: len(mine),
                S.DEVICE_HOURS: float(wall_time) * d[S.N_DEVICES] / 3600.0}

    def record(self, new_run_rounds: int, now: float | None = None) -> Record:
        """The attempt as it stands at this commit (world rank 0 brings it to every commit it makes)."""
        now = time.time() if now is None else now
        self.run_rounds += new_run_rounds
        d = describe(self.facts)
        attrs = {S.ATTEMPT: self.index, **self.software, S.STARTED: utc(self.started), S.LAST_COMMIT: utc(now), **d,
                 S.WORLD_SIZE: len(self.facts), S.N_GROUPS: self.n_groups, S.RUN_ROUNDS: self.run_rounds,
                 S.DEVICE_HOURS: (now - self.started) * d[S.N_DEVICES] / 3600.0,
                 S.SLURM_JOB_ID: os.environ.get("SLURM_JOB_ID", "")}
        return Record(path=S.attempt_path(self.index), attrs=attrs)
