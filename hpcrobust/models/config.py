"""Settings of the models a sweep trains and attacks, and of the built-in tiny family."""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.fields import build, setting

DTYPE_NAMES = ("float32", "bfloat16")
FLOAT16_REFUSED = ("float16 is refused: training in float16 needs loss scaling, which hpcrobust does not do"
                   " (without it the weights turn NaN); use bfloat16 (float32 master weights, bfloat16 compute)"
                   " or float32")


@dataclass
class ModelConfig:
    name_or_path: str = setting("builtin:s", doc="builtin:<size>, a local HF directory, or a hub id in the HF cache")
    revision: str = setting("", doc="HF revision (empty = default; refused for built-in sizes)")
    torch_dtype: str = setting("float32", choices=DTYPE_NAMES, doc="compute dtype; weights, gradients and optimizer"
                               " state stay float32 (bfloat16 = autocast with float32 master weights)")
    gradient_checkpointing: bool = setting(False, doc="recompute each decoder layer's activations in the backward"
                                           " of training (less memory, about a third more training compute)")
    trust_remote_code: bool = setting(False, doc="let HF run code from the model folder (off by default)")
    pretrain_flops: float = setting(0.0, lo=0.0, doc="pretraining compute when it is not known (0 = look it up)")
    rounds: int = setting(-1, lo=-1, doc="adversarial rounds for this size (-1 = advtrain.rounds)")
    lr_scale: float = setting(1.0, lo=0.0, doc="multiplies finetune.lr and advtrain.lr for this size (small models"
                              " want larger steps)")
    adv_lr_scale: float = setting(-1.0, lo=-1.0, doc="multiplies advtrain.lr for this size instead of lr_scale (-1 ="
                                  " lr_scale): a size that needs a large fine-tuning step may need a gentler one"
                                  " on a small adversarial set")
    random_token_defense: int = setting(-1, lo=-1, hi=4096, doc="this size's baseline defense (-1 ="
                                        " finetune.random_token_defense)")
    label: str = setting("", doc="short name in the results (default: derived from name_or_path)")
    ranks: int = setting(0, lo=0, hi=10**6, doc="ranks that hold one run of this size (0 = parallel.ranks_per_group);"
                         " setting it or groups on any size cuts the world per size")
    groups: int = setting(0, lo=0, hi=10**6, doc="groups of `ranks` ranks that serve this size (0 = one per seed of"
                          " the job, all its runs at once); only in the per-size layout")

    @classmethod
    def from_data(cls, value: object, key: str) -> ModelConfig:
        """`- builtin:s` is short for `- name_or_path: builtin:s`."""
        if isinstance(value, str):
            value = {"name_or_path": value}
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        if value.get("torch_dtype") == "float16":
            raise UserError(f"{key}.torch_dtype: {FLOAT16_REFUSED}")
        m = build(cls, value, key)
        if m.is_builtin and m.revision:
            raise UserError(f"{key}.revision: built-in sizes have no revisions; remove it")
        return m

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.startswith("builtin:")


def model_label(m: ModelConfig) -> str:
    if m.label:
        return m.label
    name = m.name_or_path.rstrip("/")
    if name.startswith("builtin:"):
        return name.split(":", 1)[1]
    return name.split("/")[-1] or name


@dataclass
class FamilyConfig:
    vocab_size: int = setting(1024, lo=300, hi=65536, doc="tokenizer vocabulary of the built-in family")
    corpus_lines: int = setting(40000, lo=100, hi=10**8, doc="generated lines for tokenizer and pretraining")
    pretrain_steps: int = setting(900, lo=1, hi=10**8, doc="causal-LM steps of the smallest sizes (larger ones take"
                                                           " fewer)")
    pretrain_batch: int = setting(32, lo=1, hi=10**5, doc="sequences per pretraining step")
    pretrain_seq_len: int = setting(64, lo=8, hi=10**5, doc="tokens per pretraining sequence")
    pretrain_lr: float = setting(2e-3, lo=0.0, doc="pretraining learning rate")
    seed: int = setting(0, lo=0, doc="seed of the family build")
    cache_dir: str = setting("", doc="where built models go (default $HPCROBUST_CACHE or ~/.cache/hpcrobust)")
