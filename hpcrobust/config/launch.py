"""SLURM resources, named exactly as submitit's AutoExecutor names them (used by `submit` and `sbatch`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.fields import setting, shown


@dataclass
class LaunchConfig:
    """SLURM resources, named exactly as submitit's AutoExecutor names them (used by `submit` and `sbatch`)."""

    slurm_partition: str = setting("", doc="partition (required for --cluster slurm)")
    slurm_account: str = setting("", doc="account")
    slurm_qos: str = setting("", doc="quality of service")
    slurm_constraint: str = setting("", doc="node feature constraint")
    nodes: int = setting(1, lo=1, hi=10**5, doc="nodes per job (with models.N.ranks/groups: their ranks over"
                                                 " tasks_per_node)")
    tasks_per_node: int = setting(1, lo=1, hi=10**4, doc="MPI ranks per node (with GPUs: one rank per GPU)")
    gpus_per_node: int = setting(0, lo=0, hi=10**3, doc="GPUs per node")
    cpus_per_task: int = setting(1, lo=1, hi=10**4, doc="cores per rank")
    mem_gb: float = setting(4.0, lo=0.0, doc="memory per node in GB (0 = all of it)")
    timeout_min: str = setting("60", doc="time limit: minutes, or SLURM's MM:SS, HH:MM:SS, D-HH[:MM[:SS]] (quote it in"
                                         " YAML: 1:30:00 unquoted is read as a number)")
    slurm_srun_args: list[str] = setting(factory=lambda: ["--mpi=pmi2"], doc="extra srun arguments")
    slurm_additional_parameters: dict = setting(factory=dict, doc="extra #SBATCH keys, e.g. {mail-type: END,"
                                                                  " exclusive: true}")
    slurm_array_parallelism: int = setting(16, lo=1, hi=10**6, doc="array jobs running at once")
    slurm_signal_delay_s: int = setting(90, lo=10, hi=10**6, doc="USR2 this long before the time limit (stop,"
                                                                 " checkpoint, requeue)")
    array_over: str = setting("none", choices=("none", "seeds", "shards"),
                              doc="job array: one job per seed, or per shard of the seeds; each writes its own file")
    array_shards: int = setting(2, lo=1, hi=10**6, doc="array_over=shards: how many jobs share the seeds")
    folder: str = setting("slurm_logs/%j", doc="submitit log folder (%j = job id)")
    max_requeues: int = setting(10, lo=0, hi=10**6, doc="time-limit requeues before giving up (submitit's"
                                                        " max_num_timeout; preemptions always requeue)")
    safe_stop_s: float = setting(60.0, lo=0.0, doc="after USR2/TERM, wait at most this long for every group to save"
                                                   " its work in progress (or for the next committed round), then"
                                                   " requeue mid-round (committed rounds are kept either way)")
    save_every_min: float = setting(10.0, lo=0.0, doc="inside a round, keep the training phase's last step and a"
                                    " running attack's state at most this many minutes old (0 = after every step; USR2"
                                    " saves at once), so a killed or requeued run goes on from it; the training attack"
                                    " and each evaluation attack are kept when done")
    freeze_code: bool = setting(True, doc="submit: copy the hpcrobust package next to the logs, so later edits of"
                                          " the checkout cannot change a queued job")

    def sbatch_flags(self) -> dict[str, object]:
        """slurm_additional_parameters as sbatch takes them: `true` is a bare flag (--exclusive), `false` none."""
        return {k: v for k, v in self.slurm_additional_parameters.items() if v is not False}

    def minutes(self) -> int:
        """`timeout_min` in whole minutes (rounded up), as submitit and `#SBATCH --time` take it."""
        return slurm_minutes(self.timeout_min)

    def validate(self, n_seeds: int) -> None:
        """Cross-field checks, so a bad submission fails here and not in the queue."""
        self.minutes()
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise UserError(f"launch.tasks_per_node: {self.tasks_per_node}, but one rank per GPU needs"
                            f" launch.tasks_per_node={self.gpus_per_node} (launch.gpus_per_node)")
        if self.safe_stop_s >= self.slurm_signal_delay_s:
            raise UserError(f"launch.safe_stop_s: {self.safe_stop_s} must be below launch.slurm_signal_delay_s"
                            f" ({self.slurm_signal_delay_s}), or the time limit ends the job before it requeues")
        if self.array_over == "shards" and self.array_shards > n_seeds:
            raise UserError(f"launch.array_shards: {self.array_shards} shards but only {n_seeds} seed(s)")
        for name in ("slurm_partition", "slurm_account", "slurm_qos", "slurm_constraint", "folder"):
            directive_safe(f"launch.{name}", getattr(self, name))
        for key, value in self.slurm_additional_parameters.items():
            if not isinstance(key, str) or not _SBATCH_KEY.fullmatch(key):
                raise UserError(f"launch.slurm_additional_parameters: {shown(key)} is not an sbatch option name")
            if not isinstance(value, (str, int, float, bool)):
                raise UserError(f"launch.slurm_additional_parameters.{key}: expected a string or number")
            directive_safe(f"launch.slurm_additional_parameters.{key}", str(value))
        for i, arg in enumerate(self.slurm_srun_args):
            if "\0" in arg:
                raise UserError(f"launch.slurm_srun_args.{i}: contains a NUL character")


_SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)|(?P<mm>\d+):(?P<ss>\d+)|(?P<min>\d+))")


def slurm_minutes(text: str) -> int:
    """Parse SLURM's time formats; anything else, or zero, is a user error (caught before submitting)."""
    m = _TIME.fullmatch(str(text).strip())
    bad = UserError(f"launch.timeout_min: {shown(text)} is not a time limit (minutes, MM:SS, HH:MM:SS or"
                    f" D-HH[:MM[:SS]])")
    if m is None:
        raise bad
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "d" in g:
        h, mi, s = g["dh"], g.get("dm", 0), g.get("ds", 0)
        if h > 23 or mi > 59 or s > 59:
            raise bad
        seconds = ((g["d"] * 24 + h) * 60 + mi) * 60 + s
    elif "h" in g:
        if g["m"] > 59 or g["s"] > 59:
            raise bad
        seconds = (g["h"] * 60 + g["m"]) * 60 + g["s"]
    elif "mm" in g:
        if g["ss"] > 59:
            raise bad
        seconds = g["mm"] * 60 + g["ss"]
    else:
        seconds = g["min"] * 60
    if seconds <= 0:
        raise UserError(f"launch.timeout_min: {shown(text)} is not a positive time limit")
    return -(-seconds // 60)


def directive_safe(key: str, value: str) -> str:
    """sbatch reads `#SBATCH` lines itself: a newline would end the directive (and start shell code), and it
    drops backslashes. Such values cannot be quoted, so they are refused."""
    if any(c in value for c in "\n\r\\") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{key}: {shown(value)} cannot go into an #SBATCH line (newline, control character or"
                        f" backslash)")
    return value
