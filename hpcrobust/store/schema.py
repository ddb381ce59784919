"""The HDF5 results layout, in one place (invariant 4). Bump SCHEMA_VERSION when it changes.

    /                                   attrs: format, schema_version, hpcrobust_version,
                                               config (resolved YAML), science_hash, inputs, experiment,
                                               and the creating attempt's software (see HEADER_ATTRS)
    /runs/<run>/                        attrs: model, model_label, seed, task, run_index
    /runs/<run>/rounds/<RRRR>/          attrs: round, committed (1 once every dataset is written),
                                               where it ran and its device-hours (see ROUND_ATTRS)
        scalars (0-d datasets)          clean_accuracy, train_loss, flops_nominal, flops_actual,
                                        wall_time, n_params, pretrain_flops, ... (see ROUND_SCALARS)
        attacks/<name>/...              per-attack arrays (see ATTACK_ARRAYS); only in the rounds
                                        the attack runs in (attacks.N.rounds)
    /transfer/<RRRR>/                   attrs: round, committed
        <attack>/asr                    [source run, target run] ASR of source's suffixes on target
        <attack>/runs                   run names in matrix order
    /attempts/<AAAA>/                   attrs: committed, and one process group's provenance (see
                                        ATTEMPT_ATTRS): software, hosts, devices, device-hours

Provenance (the header's software, ROUND_ATTRS, /attempts/) says how a number was computed, never what
it is: it differs between attempts and rank counts, so comparisons of results skip it (PROVENANCE), as they
skip wall times. Files written before it existed lack it, and read as before.

Strings are stored as fixed-length UTF-8 bytes so the same layout can be written in parallel (each rank
writes its arrays' bytes at their fixed places in the file, which variable-length data has not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT = "hpcrobust-results"
SCHEMA_VERSION = 2  # v2: asr_current, early_stop, pretrain_n/pretrain_tokens, n_dropped_*

RUNS = "runs"
ROUNDS = "rounds"
ATTACKS = "attacks"
TRANSFER = "transfer"
ATTEMPTS = "attempts"
COMMITTED = "committed"

# Every name below is declared once, with its meaning: the writer refuses any other, the README's tables
# are generated from these tables, and code names them through the constants.
RUN_ATTRS: dict[str, str] = {}  # attributes of /runs/<run>/ (the run's metadata)
ROUND_SCALARS: dict[str, str] = {}  # 0-d datasets of a round
ATTACK_ARRAYS: dict[str, str] = {}  # datasets of attacks/<name>/ in a round
TRANSFER_ARRAYS: dict[str, str] = {}  # datasets of <attack>/ in a transfer matrix
HEADER_ATTRS: dict[str, str] = {}  # attributes of / (written once, when the file is created)
ROUND_ATTRS: dict[str, str] = {}  # attributes of a round group besides its committed mark
ATTEMPT_ATTRS: dict[str, str] = {}  # attributes of /attempts/<AAAA>/ besides its committed mark


def _declare(table: dict[str, str], name: str, doc: str) -> str:
    table[name] = doc
    return name


MODEL = _declare(RUN_ATTRS, "model", "name_or_path of the model")
MODEL_LABEL = _declare(RUN_ATTRS, "model_label", "short name of the size")
SEED = _declare(RUN_ATTRS, "seed", "the run's seed")
TASK = _declare(RUN_ATTRS, "task", "task name")
RUN_INDEX = _declare(RUN_ATTRS, "run_index", "position of the run in the sweep")
PLANNED_ROUNDS = _declare(RUN_ATTRS, "rounds", "adversarial rounds planned for this run")


_declare(HEADER_ATTRS, "format", f"'{FORMAT}'")
_declare(HEADER_ATTRS, "schema_version", "version of this layout")
HPCROBUST_VERSION = _declare(HEADER_ATTRS, "hpcrobust_version", "package version")
_declare(HEADER_ATTRS, "config", "the fully resolved config (YAML)")
_declare(HEADER_ATTRS, "science_hash", "identity of the sweep: a rerun may only add to a file with the same one")
_declare(HEADER_ATTRS, "inputs", "digests of the task file and model files (YAML)")
_declare(HEADER_ATTRS, "experiment", "the experiment's name when the file was created")
CREATED = _declare(HEADER_ATTRS, "created", "when the file was created (UTC, ISO 8601)")
GIT_COMMIT = _declare(HEADER_ATTRS, "git_commit", "commit of the package's git checkout ('' when it was not run"
                      " from one, or git did not answer)")
GIT_DIRTY = _declare(HEADER_ATTRS, "git_dirty", "1 when tracked files of that checkout differed from the commit,"
                     " 0 when not, -1 when unknown")
PYTHON_VERSION = _declare(HEADER_ATTRS, "python_version", "Python version")
TORCH_VERSION = _declare(HEADER_ATTRS, "torch_version", "torch version")
CUDA_VERSION = _declare(HEADER_ATTRS, "cuda_version", "CUDA version torch was built with ('' for a CPU build)")
TRANSFORMERS_VERSION = _declare(HEADER_ATTRS, "transformers_version", "transformers version")
# What every attempt records about its code; the header holds the creating attempt's.
SOFTWARE = (HPCROBUST_VERSION, GIT_COMMIT, GIT_DIRTY, PYTHON_VERSION, TORCH_VERSION, CUDA_VERSION,
            TRANSFORMERS_VERSION)

ROUND = _declare(ROUND_ATTRS, "round", "the round's number")
ATTEMPT = _declare(ROUND_ATTRS, "attempt", "the attempt that computed this round (/attempts/<AAAA>/)")
HOSTS = _declare(ROUND_ATTRS, "hosts", "host names of the ranks of the run's group (comma-separated)")
DEVICE_KIND = _declare(ROUND_ATTRS, "device_kind", "'gpu' or 'cpu': whether device-hours are GPU-hours or"
                       " core-hours")
DEVICE_NAMES = _declare(ROUND_ATTRS, "device_names", "GPU or CPU model of the group's ranks (comma-separated"
                        " when they differ)")
WORLD_SIZE = _declare(ROUND_ATTRS, "world_size", "MPI ranks of the attempt")
GROUP_SIZE = _declare(ROUND_ATTRS, "group_size", "ranks of the run's group")
N_DEVICES = _declare(ROUND_ATTRS, "n_devices", "devices the group used: distinct GPUs, or CPU cores (the ranks'"
                     " threads, at most a host's cores)")
DEVICE_HOURS = _declare(ROUND_ATTRS, "device_hours", "wall_time x n_devices / 3600: GPU-hours on GPUs, core-hours"
                        " on CPU (the round itself; cross-run phases and commits count in the attempt's)")

_declare(ATTEMPT_ATTRS, ATTEMPT, "the attempt's number: 0 for the run that created the file, one more per resume")
for _name in SOFTWARE:
    _declare(ATTEMPT_ATTRS, _name, HEADER_ATTRS[_name])
STARTED = _declare(ATTEMPT_ATTRS, "started", "when the attempt started (UTC, ISO 8601)")
LAST_COMMIT = _declare(ATTEMPT_ATTRS, "last_commit", "when it last committed (UTC, ISO 8601)")
_declare(ATTEMPT_ATTRS, HOSTS, "host names of all ranks (comma-separated)")
_declare(ATTEMPT_ATTRS, DEVICE_KIND, ROUND_ATTRS[DEVICE_KIND])
_declare(ATTEMPT_ATTRS, DEVICE_NAMES, "GPU or CPU models of all ranks (comma-separated when they differ)")
_declare(ATTEMPT_ATTRS, WORLD_SIZE, "MPI ranks")
N_GROUPS = _declare(ATTEMPT_ATTRS, "n_groups", "groups the ranks were split into")
_declare(ATTEMPT_ATTRS, N_DEVICES, "devices of all ranks: distinct GPUs, or CPU cores")
RUN_ROUNDS = _declare(ATTEMPT_ATTRS, "run_rounds", "(run, round) records it committed")
_declare(ATTEMPT_ATTRS, DEVICE_HOURS, "(last_commit - started) x n_devices / 3600: all the time it held its devices"
         " until its last commit, idle time and cross-run phases included")
SLURM_JOB_ID = _declare(ATTEMPT_ATTRS, "slurm_job_id", "SLURM_JOB_ID ('' outside SLURM)")

# Attributes that say how a number was computed, not what it is: they differ between attempts and rank counts,
# so comparisons of results skip them (with the whole of /attempts/), as they skip wall times.
PROVENANCE = frozenset(k for k in ROUND_ATTRS if k != ROUND)


CLEAN_ACCURACY = _declare(ROUND_SCALARS, "clean_accuracy", "accuracy on the validation split before any attack")
TRAIN_LOSS = _declare(ROUND_SCALARS, "train_loss", "mean training loss of this round (fine-tuning in round 0)")
FLOPS_NOMINAL = _declare(ROUND_SCALARS, "flops_nominal", "training FLOPs of this round, 2NT forward + 4NT backward")
FLOPS_ACTUAL = _declare(ROUND_SCALARS, "flops_actual", "training FLOPs of this round as really computed")
FINETUNE_FLOPS = _declare(ROUND_SCALARS, "finetune_flops", "nominal FLOPs of clean fine-tuning (round 0 only,"
                          " else 0)")
DEFENSE_FLOPS = _declare(ROUND_SCALARS, "defense_flops", "nominal FLOPs of this round's adversarial training:"
                         " attack generation + training")
DEFENSE_FLOPS_CUM = _declare(ROUND_SCALARS, "defense_flops_cum", "defense_flops summed over rounds 1..this round")
TRAIN_ATTACK_ITERATIONS = _declare(ROUND_SCALARS, "train_attack_iterations", "iterations of the training attack"
                                   " this round (its linear schedule)")
TRAIN_ATTACK_SUCCESS = _declare(ROUND_SCALARS, "train_attack_success", "fraction of this round's attacked training"
                                " examples that flipped")
N_ADVERSARIAL = _declare(ROUND_SCALARS, "n_adversarial", "adversarial examples in this round's training set")
N_CLEAN = _declare(ROUND_SCALARS, "n_clean", "clean examples in this round's training set")
WALL_TIME = _declare(ROUND_SCALARS, "wall_time", "seconds this round took (not compared across rank counts)")
N_PARAMS = _declare(ROUND_SCALARS, "n_params", "parameters of the classifier (N of the FLOP convention)")
PRETRAIN_FLOPS = _declare(ROUND_SCALARS, "pretrain_flops", "6·N·D of pretraining (NaN if unknown)")
PRETRAIN_N = _declare(ROUND_SCALARS, "pretrain_n", "N of 6·N·D: the reference's parameter count of the pretrained"
                      " model (NaN if unknown)")
PRETRAIN_TOKENS = _declare(ROUND_SCALARS, "pretrain_tokens", "D of 6·N·D: pretraining tokens (NaN if unknown)")
N_DROPPED_TRAIN = _declare(ROUND_SCALARS, "n_dropped_train", "training examples dropped as longer than the"
                           " context (never truncated)")
N_DROPPED_VAL = _declare(ROUND_SCALARS, "n_dropped_val", "validation examples dropped as longer than the context")

ASR = _declare(ATTACK_ARRAYS, "asr", "[n_iterations+1] share of the examples correct before the attack that"
               " flipped at or before each iteration (index 0: the initial string)")
ASR_CURRENT = _declare(ATTACK_ARRAYS, "asr_current", "[n_iterations+1] the reference's ASR: share of the examples"
                       " correct before the attack whose current candidate at iteration t is misclassified"
                       " (index 0: 0 by definition)")
EARLY_STOP = _declare(ATTACK_ARRAYS, "early_stop", "1 when examples stopped at their first success (a speed"
                      " option; the reference runs every iteration)")
CORRECT_BEFORE = _declare(ATTACK_ARRAYS, "correct_before", "[n_examples] bool: classified correctly without the"
                          " attack")
FIRST_SUCCESS = _declare(ATTACK_ARRAYS, "first_success", "[n_examples] iteration of the first label flip"
                         " (-1: never)")
ATTACK_TOKENS = _declare(ATTACK_ARRAYS, "attack_tokens", "[n_examples, n_attack_tokens] final attack token ids")
ATTACK_TEXT = _declare(ATTACK_ARRAYS, "attack_text", "[n_examples] final attack decoded (fixed-length UTF-8)")
EXAMPLE_INDEX = _declare(ATTACK_ARRAYS, "example_index", "[n_examples] index of each attacked example in the"
                         " validation split")
ATTACK_FLOPS_NOMINAL = _declare(ATTACK_ARRAYS, "flops_nominal", "[n_iterations+1] attack FLOPs per iteration"
                                " (index 0: setup), nominal (as if nothing were cached)")
ATTACK_FLOPS_ACTUAL = _declare(ATTACK_ARRAYS, "flops_actual", "[n_iterations+1] attack FLOPs per iteration, as"
                               " actually computed")
FINAL_LOSS = _declare(ATTACK_ARRAYS, "final_loss", "[n_examples] wrong-label loss of the final attack")
SHARED_CANDIDATES = _declare(ATTACK_ARRAYS, "shared_candidates", "RandomToken: 1 when the candidates were drawn"
                             " once and broadcast to every size")
CANDIDATES_SHA256 = _declare(ATTACK_ARRAYS, "candidates_sha256", "RandomToken: digest of the broadcast candidates"
                             " (equal across sizes of a seed)")
ATTACK_WALL_TIME = _declare(ATTACK_ARRAYS, "wall_time", "seconds the attack took")

TRANSFER_ASR = _declare(TRANSFER_ARRAYS, "asr", "[source run, target run] ASR of the source's final attacks on the"
                        " target")
TRANSFER_RUNS = _declare(TRANSFER_ARRAYS, "runs", "run names in matrix order")


def round_name(r: int) -> str:
    return f"{r:04d}"


def run_path(run_key: str) -> str:
    return f"{RUNS}/{run_key}"


def round_path(run_key: str, r: int) -> str:
    return f"{RUNS}/{run_key}/rounds/{round_name(r)}"


def transfer_path(r: int) -> str:
    return f"{TRANSFER}/{round_name(r)}"


def attempt_path(n: int) -> str:
    return f"{ATTEMPTS}/{round_name(n)}"


def attack_path(name: str, array: str) -> str:
    """An attack's dataset, relative to its round."""
    return f"{ATTACKS}/{name}/{array}"


def text_array(strings: list[str]) -> np.ndarray:
    raw = [s.encode("utf-8") for s in strings]
    width = max([1, *(len(b) for b in raw)])
    return np.array(raw, dtype=f"S{width}")


def decode_text(arr: np.ndarray) -> list[str]:
    return [b.decode("utf-8", errors="replace") for b in np.asarray(arr).tolist()]


@dataclass
class Record:
    """One atomic unit of results: a group path, its attrs, scalars and arrays; committed as a whole."""

    path: str  # round_path(...), transfer_path(...) or attempt_path(...)
    attrs: dict = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    parent_attrs: dict[str, dict] = field(default_factory=dict)  # attrs of enclosing groups (run metadata)
    # amend: add attack arrays to a round committed earlier (an ensemble under the queue schedule, which runs
    # once every size of its seed has committed the round); the round keeps its attrs, scalars and mark
    amend: bool = False

    def check(self) -> None:
        """Refuse a dataset the schema does not declare (a typo would otherwise make a new column)."""
        parts = self.path.split("/")
        if self.amend and not (parts[0] == RUNS and len(parts) == 4 and parts[2] == ROUNDS and not self.attrs
                               and not self.scalars and not self.parent_attrs):
            raise ValueError(f"record {self.path}: only a round's attack arrays can be added to a committed round")
        if parts[0] == RUNS and len(parts) == 4 and parts[2] == ROUNDS:
            bad = [k for k in self.scalars if k not in ROUND_SCALARS]
            bad += [k for k in self.arrays
                    if not (k.count("/") == 2 and k.startswith(ATTACKS + "/") and k.rsplit("/", 1)[1] in ATTACK_ARRAYS)]
            bad += [k for k in self.attrs if k not in ROUND_ATTRS]
        elif parts[0] == TRANSFER and len(parts) == 2:
            bad = list(self.scalars)
            bad += [k for k in self.arrays if not (k.count("/") == 1 and k.rsplit("/", 1)[1] in TRANSFER_ARRAYS)]
        elif parts[0] == ATTEMPTS and len(parts) == 2:
            bad = [*self.scalars, *self.arrays, *(k for k in self.attrs if k not in ATTEMPT_ATTRS)]
        else:
            raise ValueError(f"record path {self.path!r} is not a round, a transfer matrix or an attempt of the schema")
        bad += [k for k in (self.parent_attrs.get(run_path(parts[1]), {}) if parts[0] == RUNS else {})
                if k not in RUN_ATTRS]
        if bad:
            raise ValueError(f"record {self.path}: {', '.join(bad)} not declared in store/schema.py")

    def meta(self) -> dict:
        """Everything but the array contents: what every rank must know to create the layout."""
        return {"path": self.path, "attrs": self.attrs, "scalars": self.scalars,
                "parent_attrs": self.parent_attrs, "amend": self.amend,
                "arrays": {k: (v.shape, v.dtype.str) for k, v in self.arrays.items()}}


def attack_arrays(res) -> dict[str, np.ndarray]:
    """An AttackResult as datasets under attacks/<name>/ (see ATTACK_ARRAYS)."""
    width = max([1, *(len(t) for t in res.tokens)])
    toks = np.full((len(res.tokens), width), -1, dtype=np.int64)
    for i, t in enumerate(res.tokens):
        toks[i, : len(t)] = t
    arrays = {
        ASR: np.asarray(res.asr, dtype=np.float64),
        ASR_CURRENT: np.asarray(res.asr_current, dtype=np.float64),
        EARLY_STOP: np.int64(bool(res.early_stop)),
        CORRECT_BEFORE: np.asarray(res.correct_before, dtype=bool),
        FIRST_SUCCESS: np.asarray(res.first_success, dtype=np.int64),
        ATTACK_TOKENS: toks,
        ATTACK_TEXT: text_array(res.texts),
        EXAMPLE_INDEX: np.asarray(res.example_index, dtype=np.int64),
        ATTACK_FLOPS_NOMINAL: np.asarray(res.flops_nominal, dtype=np.float64),
        ATTACK_FLOPS_ACTUAL: np.asarray(res.flops_actual, dtype=np.float64),
        FINAL_LOSS: np.asarray(res.final_loss, dtype=np.float64),
        ATTACK_WALL_TIME: np.float64(res.wall_time),
    }
    return {attack_path(res.name, k): v for k, v in arrays.items()}
