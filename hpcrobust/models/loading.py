"""Load any Hugging Face causal LM (or a built-in size, or a saved round) as a 2-label classifier.

Nothing is downloaded: a name is a local folder, a built-in size, or a hub id already in the HF
cache (`local_files_only`). Remote code stays off unless the config turns it on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hpcrobust.errors import UserError
from hpcrobust.models import family
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.config import FamilyConfig, ModelConfig, model_label
from hpcrobust.models.determinism import make_thread_invariant
from hpcrobust.models.precision import COMPUTE_DTYPES, MASTER_DTYPE, enable_checkpointing
from hpcrobust.models.pretrain import Pretraining, public_family
from hpcrobust.rng import torch_generator

META_FILE = "hpcrobust_model.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by name (the planner)


@dataclass(frozen=True)
class Resolved:
    path: str  # folder or hub id handed to from_pretrained
    builtin: str = ""  # size name for the built-in family


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def resolve(m: ModelConfig, fam: FamilyConfig) -> Resolved:
    name = m.name_or_path
    if name.startswith("builtin:"):
        size = name.split(":", 1)[1]
        family.check_size(size)
        return Resolved(str(family.size_dir(fam, size)), builtin=size)
    if _looks_like_path(name):
        p = Path(name).expanduser()
        if not p.is_dir():
            raise UserError(f"model directory not found: {p}")
        if not (p / "config.json").is_file():
            raise UserError(f"model directory has no config.json: {p}")
        return Resolved(str(p))
    return Resolved(name)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


REMOTE_CODE = "custom code"  # how transformers says that a folder's classes live in its own Python files


def model_config(m: ModelConfig, fam: FamilyConfig, key: str = "model", trust_key: str = ""):
    """The HF config, without weights: enough for the checks (vocab size, architecture).

    `trust_key` names the config key that would allow the folder's own code (none for a BEAST sampler).
    """
    from transformers import AutoConfig

    r = resolve(m, fam)
    if r.builtin:
        return None  # built later by the family builder; its vocab is family.vocab_size
    try:
        return AutoConfig.from_pretrained(r.path, local_files_only=True, trust_remote_code=m.trust_remote_code,
                                          revision=m.revision or None)
    except (OSError, ValueError) as exc:
        text = str(exc).strip()
        if REMOTE_CODE in text and not m.trust_remote_code:
            fix = (f"set {trust_key}: true if you trust that code" if trust_key else
                   "hpcrobust runs no remote code here; use a model whose architecture transformers knows")
            raise UserError(f"{key}: '{m.name_or_path}' needs Python code from its folder to load; {fix}") from None
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        first = text.splitlines()[0] if text else type(exc).__name__
        raise UserError(f"{key}: '{m.name_or_path}' is not a local folder and not loadable from the HF cache"
                        f" (HF_HOME={hf_home}): {first}") from None


def load_tokenizer(path: str, m: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=m.trust_remote_code,
                                        revision=m.revision or None)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def pretraining(m: ModelConfig, r: Resolved, fam: FamilyConfig, hf_config, n_backbone: int,
                n_embedding: int) -> Pretraining:
    """The config's value, the built-in size's measured one, a checkpoint's stored one, or the reference's
    rule for a public family (models/pretrain.py)."""
    if m.pretrain_flops > 0:
        return Pretraining(m.pretrain_flops, source="config")
    if r.builtin:
        info = family.size_info(fam, r.builtin)
        return Pretraining.of(info["n_params_lm"], info["pretrain_tokens"], "built-in family: measured")
    meta = Path(r.path) / META_FILE
    if meta.is_file():
        return Pretraining.from_json(json.loads(meta.read_text()))
    return public_family(m.name_or_path, hf_config, n_backbone, n_embedding)


def load_classifier(m: ModelConfig, fam: FamilyConfig, device: torch.device, seed: int) -> Classifier:
    """The classifier for one run; a fresh head is drawn from a stream keyed by (seed, model).

    The weights load as float32 whatever `torch_dtype` says: that is the compute dtype (models/precision.py).
    """
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    r = resolve(m, fam)
    hf = AutoModelForSequenceClassification.from_pretrained(
        r.path, num_labels=2, local_files_only=True, trust_remote_code=m.trust_remote_code,
        revision=m.revision or None, dtype=MASTER_DTYPE, use_safetensors=None)
    tok = load_tokenizer(r.path, m)
    hf.config.pad_token_id = tok.pad_token_id
    make_thread_invariant(hf)
    archs = list(getattr(hf.config, "architectures", None) or [])
    trained_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if not trained_head:
        g = torch_generator(seed, "head-init", model_label(m))
        std = getattr(hf.config, "initializer_range", 0.02)
        with torch.no_grad():
            w = torch.randn(hf.score.weight.shape, generator=g) * std
            hf.score.weight.copy_(w.to(hf.score.weight.dtype))
            if hf.score.bias is not None:
                hf.score.bias.zero_()
    n_body = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("score."))
    emb = hf.get_input_embeddings().weight.numel()
    if m.gradient_checkpointing:
        enable_checkpointing(hf, model_label(m))
    clf = Classifier(hf.to(device), tok, model_label(m), pretraining(m, r, fam, hf.config, n_body, emb),
                     compute_dtype=COMPUTE_DTYPES[m.torch_dtype], checkpointing=m.gradient_checkpointing)
    clf.set_trainable(False)
    return clf


def save_classifier(clf: Classifier, out: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """A round's checkpoint: a normal HF folder (safetensors) that `name_or_path` can point to. `weights`
    replaces the model's own state dict (a sharded model's, gathered)."""
    _quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    model = clf.model
    # transformers 5 writes the weights only on torch.distributed's global rank 0; here the caller (a group's
    # leader, any world rank) is the one that saves, so that check is lifted for this call
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(out, safe_serialization=True, state_dict=weights)
    finally:
        del model.should_save_on_this_rank
    clf.tokenizer.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps({**clf.pretraining.to_json(), "source": clf.name}))


def count_parameters(m: ModelConfig, fam: FamilyConfig) -> int:
    """Parameters of the classifier, from its config alone (no weights are read)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    r = resolve(m, fam)
    cfg = AutoConfig.from_pretrained(r.path, local_files_only=True, trust_remote_code=m.trust_remote_code,
                                     revision=m.revision or None, num_labels=2)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg, trust_remote_code=m.trust_remote_code)
    return sum(p.numel() for p in model.parameters())
