"""YAML -> typed dataclasses, with `key.sub=value` overrides and one-line validation errors.

Everything a sweep does is decided here, before any work starts, so that a bad value costs the
user one line and exit 2 rather than a traceback an hour into a job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcrobust.errors import UserError

TASKS = ("password_match", "word_length", "spam", "imdb", "helpful", "harmless")
FILE_TASKS = ("spam", "imdb", "helpful", "harmless")
ATTACK_TYPES = ("random_token", "gcg", "beast")
PLACEMENTS = ("suffix", "prefix", "infix", "overwrite")


def _f(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, doc: str = "", factory: Any = None) -> Any:
    meta = {"choices": choices, "lo": lo, "hi": hi, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TaskConfig:
    name: str = _f("password_match", choices=TASKS, doc="which task to fine-tune and attack")
    path: str = _f("", doc="JSONL or CSV file for spam/imdb/helpful/harmless")
    n_train: int = _f(4000, lo=2, doc="training examples")
    n_val: int = _f(200, lo=1, doc="held-out examples for clean accuracy and attacks")
    seed: int = _f(0, lo=0, doc="seed of the data itself (same examples for every run)")
    max_content_tokens: int = _f(256, lo=8, doc="file tasks: content is cut to this many tokens")


@dataclass
class ModelConfig:
    name_or_path: str = _f("builtin:s", doc="builtin:<size>, a local HF directory, or a hub id in the HF cache")
    revision: str = _f("", doc="HF revision (empty = default)")
    torch_dtype: str = _f("float32", choices=("float32", "bfloat16", "float16"), doc="weights and compute dtype")
    trust_remote_code: bool = _f(False, doc="let HF run code from the model folder (off by default)")
    pretrain_flops: float = _f(0.0, lo=0.0, doc="pretraining compute when it is not known (0 = look it up)")
    rounds: int = _f(-1, lo=-1, doc="adversarial rounds for this size (-1 = advtrain.rounds)")
    lr_scale: float = _f(1.0, lo=0.0, doc="multiplies finetune.lr and advtrain.lr for this size (small models"
                         " want larger steps)")
    adv_lr_scale: float = _f(-1.0, lo=-1.0, doc="multiplies advtrain.lr for this size instead of lr_scale (-1 ="
                             " lr_scale): a size that needs a large fine-tuning step may need a gentler one"
                             " on a small adversarial set")
    random_token_defense: int = _f(-1, lo=-1, doc="this size's baseline defense (-1 = finetune.random_token_defense)")
    label: str = _f("", doc="short name in the results (default: derived from name_or_path)")


@dataclass
class FamilyConfig:
    vocab_size: int = _f(1024, lo=300, hi=65536, doc="tokenizer vocabulary of the built-in family")
    corpus_lines: int = _f(40000, lo=100, doc="generated lines for tokenizer and pretraining")
    pretrain_steps: int = _f(900, lo=1, doc="causal-LM steps of the smallest sizes (larger ones take fewer)")
    pretrain_batch: int = _f(32, lo=1, doc="sequences per pretraining step")
    pretrain_seq_len: int = _f(64, lo=8, doc="tokens per pretraining sequence")
    pretrain_lr: float = _f(2e-3, lo=0.0, doc="pretraining learning rate")
    seed: int = _f(0, lo=0, doc="seed of the family build")
    cache_dir: str = _f("", doc="where built models go (default $HPCROBUST_CACHE or ~/.cache/hpcrobust)")


@dataclass
class FinetuneConfig:
    epochs: float = _f(2.0, lo=0.0, doc="passes over the train split")
    lr: float = _f(3e-3, lo=0.0, doc="peak learning rate")
    batch_size: int = _f(32, lo=1, doc="examples per optimizer step (same for every size and rank count)")
    micro_batch_size: int = _f(32, lo=1, doc="examples per forward/backward; divides batch_size")
    warmup_frac: float = _f(0.1, lo=0.0, hi=1.0, doc="fraction of steps with linear warmup")
    schedule: str = _f("linear", choices=("linear", "constant"), doc="learning-rate schedule after warmup")
    optimizer: str = _f("adamw", choices=("adamw", "adafactor"), doc="optimizer")
    weight_decay: float = _f(0.0, lo=0.0, doc="AdamW weight decay")
    eval_batch_size: int = _f(64, lo=1, doc="examples per forward when measuring accuracy")
    random_token_defense: int = _f(0, lo=0, doc="baseline defense (off at 0): this many random tokens in the"
                                   " attack position of half the fine-tuning examples")


@dataclass
class AttackConfig:
    name: str = _f("gcg_suffix", doc="label in the results file")
    type: str = _f("gcg", choices=ATTACK_TYPES, doc="attack algorithm")
    placement: str = _f("suffix", choices=PLACEMENTS, doc="where the attack tokens go")
    infix_fraction: float = _f(0.9, lo=0.0, hi=1.0, doc="infix: token fraction of the content before the attack")
    n_examples: int = _f(50, lo=1, doc="validation examples attacked")
    n_iterations: int = _f(10, lo=1, doc="propose-and-score steps per example")
    n_attack_tokens: int = _f(10, lo=1, doc="attack length (BEAST: final length)")
    search_width: int = _f(128, lo=1, doc="GCG: candidates per iteration; RandomToken: candidates per iteration")
    topk: int = _f(256, lo=1, doc="GCG: tokens kept per position from the gradient")
    n_replace: int = _f(1, lo=1, doc="GCG: tokens swapped per candidate")
    buffer_size: int = _f(1, lo=1, doc="GCG: best-so-far buffer")
    init_string: str = _f("", doc="GCG: initial attack text (default ' x' repeated)")
    beam_width: int = _f(8, lo=1, doc="BEAST: beams kept (k1)")
    branching: int = _f(8, lo=1, doc="BEAST: tokens sampled per beam (k2)")
    sampler: str = _f("", doc="BEAST: causal LM that proposes tokens (default: smallest built-in size)")
    ensemble: bool = _f(False, doc="GCG: one suffix for all sizes of a seed, losses summed across sizes")
    early_stop: bool = _f(True, doc="GCG/BEAST: stop an example once its label flips (RandomToken always"
                          " stops)")


@dataclass
class AdvTrainConfig:
    rounds: int = _f(0, lo=0, doc="adversarial-training rounds after round 0")
    attack: str = _f("", doc="name of the training attack in train_attacks")
    n_new_examples: int = _f(200, lo=1, doc="training examples attacked per round")
    max_examples: int = _f(1000, lo=1, doc="training-set size per round")
    max_adv_fraction: float = _f(0.8, lo=0.0, hi=1.0, doc="at most this fraction of a round's set is adversarial")
    decay: float = _f(0.005, lo=0.0, doc="pool sampling weight exp(decay * (r - r_max))")
    loss_rank_weight: float = _f(0.5, lo=0.0, hi=1.0, doc="share of the loss rank in r (rest: recency rank)")
    iterations_start: int = _f(8, lo=1, doc="training-attack iterations in round 1")
    iterations_end: int = _f(64, lo=1, doc="training-attack iterations in the last round")
    epochs: float = _f(1.0, lo=0.0, doc="epochs per round")
    lr: float = _f(1e-3, lo=0.0, doc="learning rate per round")
    schedule: str = _f("constant", choices=("linear", "constant"), doc="learning-rate schedule per round")
    optimizer: str = _f("adamw", choices=("adamw", "adafactor"), doc="optimizer per round")
    equal_compute: bool = _f(False, doc="pick rounds per size so defense compute is roughly equal")


@dataclass
class ParallelConfig:
    ranks_per_group: int = _f(1, lo=1, doc="MPI ranks that share one run")
    threads_per_rank: int = _f(0, lo=0, doc="torch threads per rank (0 = the cores of this rank, shared among"
                               " the ranks on its node); results do not depend on it")
    device: str = _f("auto", choices=("auto", "cpu", "cuda"), doc="auto: CUDA per local rank when present")
    score_chunk: int = _f(64, lo=1, doc="candidates per scoring chunk (fixed, so results do not depend on ranks)")


@dataclass
class LaunchConfig:
    """SLURM resources, named exactly as submitit's AutoExecutor names them (used by `submit` and `sbatch`)."""

    slurm_partition: str = _f("", doc="partition (required for --cluster slurm)")
    slurm_account: str = _f("", doc="account")
    slurm_qos: str = _f("", doc="quality of service")
    slurm_constraint: str = _f("", doc="node feature constraint")
    nodes: int = _f(1, lo=1, doc="nodes per job")
    tasks_per_node: int = _f(1, lo=1, doc="MPI ranks per node (with GPUs: one rank per GPU)")
    gpus_per_node: int = _f(0, lo=0, doc="GPUs per node")
    cpus_per_task: int = _f(1, lo=1, doc="cores per rank")
    mem_gb: float = _f(4.0, lo=0.0, doc="memory per node in GB (0 = all of it)")
    timeout_min: str = _f("60", doc="time limit: minutes, or SLURM's MM:SS, HH:MM:SS, D-HH[:MM[:SS]] (quote it in"
                          " YAML: 1:30:00 unquoted is read as a number)")
    slurm_srun_args: list[str] = _f(factory=lambda: ["--mpi=pmi2"], doc="extra srun arguments")
    slurm_additional_parameters: dict = _f(factory=dict, doc="extra #SBATCH keys, e.g. {mail-type: END}")
    slurm_array_parallelism: int = _f(16, lo=1, doc="array jobs running at once")
    slurm_signal_delay_s: int = _f(90, lo=10, doc="USR2 this long before the time limit (stop, checkpoint,"
                                   " requeue)")
    array_over: str = _f("none", choices=("none", "seeds", "shards"),
                         doc="job array: one job per seed, or per shard of the seeds; each writes its own file")
    array_shards: int = _f(2, lo=1, doc="array_over=shards: how many jobs share the seeds")
    folder: str = _f("slurm_logs/%j", doc="submitit log folder (%j = job id)")
    max_requeues: int = _f(10, lo=0, doc="time-limit requeues before giving up (submitit's max_num_timeout;"
                           " preemptions always requeue)")
    safe_stop_s: float = _f(60.0, lo=0.0, doc="after USR2/TERM, wait this long for the next committed round,"
                            " then requeue mid-round (committed rounds are kept either way)")
    freeze_code: bool = _f(True, doc="submit: copy the hpcrobust package next to the logs, so later edits of"
                           " the checkout cannot change a queued job")

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
                raise UserError(f"launch.slurm_additional_parameters: {key!r} is not an sbatch option name")
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
    bad = UserError(f"launch.timeout_min: {text!r} is not a time limit (minutes, MM:SS, HH:MM:SS or"
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
        raise UserError(f"launch.timeout_min: {text!r} is not a positive time limit")
    return -(-seconds // 60)


def directive_safe(key: str, value: str) -> str:
    """sbatch reads `#SBATCH` lines itself: a newline would end the directive (and start shell code), and it
    drops backslashes. Such values cannot be quoted, so they are refused."""
    if any(c in value for c in "\n\r\\") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{key}: {value!r} cannot go into an #SBATCH line (newline, control character or"
                        f" backslash)")
    return value


@dataclass
class DebugConfig:
    """Test-only switches."""

    fail_rank: int = _f(-1, lo=-1, doc="raise on this world rank (test-only)")
    fail_round: int = _f(0, lo=0, doc="... when this round starts")
    stop_after_round: int = _f(-1, lo=-1, doc="exit 3 after committing this round (resume tests)")


@dataclass
class SweepConfig:
    output: str = _f("results.h5", doc="results file (HDF5); checkpoints go to <output>.ckpt/")
    seeds: list[int] = _f(factory=lambda: [0], doc="one run per (model, seed)")
    task: TaskConfig = _f(factory=TaskConfig)
    models: list[ModelConfig] = _f(factory=lambda: [ModelConfig()])
    family: FamilyConfig = _f(factory=FamilyConfig)
    finetune: FinetuneConfig = _f(factory=FinetuneConfig)
    attacks: list[AttackConfig] = _f(factory=list, doc="evaluation attacks, run after every round")
    train_attacks: list[AttackConfig] = _f(factory=list, doc="attacks that adversarial training may use")
    advtrain: AdvTrainConfig = _f(factory=AdvTrainConfig)
    parallel: ParallelConfig = _f(factory=ParallelConfig)
    launch: LaunchConfig = _f(factory=LaunchConfig)
    debug: DebugConfig = _f(factory=DebugConfig)


# ---------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is ModelConfig:
            value = {"name_or_path": value}
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, inner, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type at {key}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    choices, lo, hi = f.metadata.get("choices"), f.metadata.get("lo"), f.metadata.get("hi")
    if choices is not None and value not in choices:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    if lo is not None and value < lo:
        raise UserError(f"{key}: {value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise UserError(f"{key}: {value} is above the maximum {hi}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise UserError(f"unknown key '{where}'")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(data[name], hints[name], key)
        if not isinstance(value, (list, dict)) and not dataclasses.is_dataclass(value):
            _check_field(f, value, key)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in the raw mapping; list items are addressed by index (`models.0.label=x`)."""
    if "=" not in override:
        raise UserError(f"override '{override}': expected key.sub=value")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{override}': empty key")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"override '{override}': no item {where}")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise UserError(f"override '{override}': {where} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"override '{override}': no item {key}")
        node[int(last)] = _parse_value(text)
    else:
        node[last] = _parse_value(text)


def _validate(cfg: SweepConfig) -> None:
    """Checks that involve more than one field."""
    if not cfg.models:
        raise UserError("models: at least one model is needed")
    if not cfg.seeds:
        raise UserError("seeds: at least one seed is needed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError("seeds: seeds repeat")
    if any(s < 0 for s in cfg.seeds):
        raise UserError("seeds: seeds must be >= 0")
    if cfg.task.name in FILE_TASKS and not cfg.task.path:
        raise UserError(f"task.path: task '{cfg.task.name}' reads a JSONL or CSV file; set task.path")
    ft = cfg.finetune
    if ft.batch_size % ft.micro_batch_size:
        raise UserError(
            f"finetune.micro_batch_size: {ft.micro_batch_size} does not divide batch_size {ft.batch_size}")
    if not cfg.output:
        raise UserError("output: empty path")
    labels = [model_label(m) for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise UserError("models: two models have the same label; set models.N.label")
    for group in ("attacks", "train_attacks"):
        names = [a.name for a in getattr(cfg, group)]
        if len(set(names)) != len(names):
            raise UserError(f"{group}: attack names repeat")
    for i, m in enumerate(cfg.models):
        if m.rounds > cfg.advtrain.rounds:
            raise UserError(f"models.{i}.rounds: {m.rounds} rounds, but the training-attack schedule"
                            f" (advtrain.rounds) only has {cfg.advtrain.rounds}")
    if cfg.advtrain.rounds > 0 or any(m.rounds > 0 for m in cfg.models):
        names = [a.name for a in cfg.train_attacks]
        if cfg.advtrain.attack not in names:
            raise UserError(f"advtrain.attack: '{cfg.advtrain.attack}' is not defined in train_attacks"
                            f" (defined: {', '.join(names) or 'none'})")
    cfg.launch.validate(len(cfg.seeds))


def model_label(m: ModelConfig) -> str:
    if m.label:
        return m.label
    name = m.name_or_path.rstrip("/")
    if name.startswith("builtin:"):
        return name.split(":", 1)[1]
    return name.split("/")[-1] or name


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping")
    return config_from_dict(data, overrides, source=str(path))


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "config"
                     ) -> SweepConfig:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data

    def expand_models() -> None:  # `- builtin:s` is short for `- name_or_path: builtin:s`
        if isinstance(data.get("models"), list):
            data["models"] = [{"name_or_path": m} if isinstance(m, str) else m for m in data["models"]]

    expand_models()
    defaults = to_dict(SweepConfig())
    try:
        for ov in overrides:
            top = ov.split("=", 1)[0].split(".")[0]
            if top not in data and top in defaults:  # an override into a default list or section
                data[top] = defaults[top]
            apply_override(data, ov)
            expand_models()
        cfg = _build(SweepConfig, data, "")
        _validate(cfg)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


_NOT_SCIENCE = ("output", "launch", "debug")


def science_hash(cfg: SweepConfig) -> str:
    """Hash of everything that decides the stored numbers; a rerun must match it to append to a file."""
    d = to_dict(cfg)
    for k in _NOT_SCIENCE:
        d.pop(k, None)
    d["parallel"] = {"score_chunk": cfg.parallel.score_chunk, "device": cfg.parallel.device}
    return hashlib.sha256(yaml.safe_dump(d, sort_keys=True).encode()).hexdigest()[:16]


def describe(cls: type = SweepConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every config key, for --help and the README."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key + ".")
            continue
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            rows += describe(typing.get_args(tp)[0], key + ".N.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc += f" [{'|'.join(f.metadata['choices'])}]"
        rows.append((key, repr(default), doc))
    return rows
