"""Architectures beyond GPT-NeoX and Qwen2: GPT-2's Conv1D layers are counted in actual FLOPs, and a Llama-style
tokenizer's BOS starts every prompt (as `tokenizer(text)` would), while the built-in family gets none."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from hpcrobust.config import FamilyConfig, ModelConfig, TaskConfig
from hpcrobust.models.loading import load_classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks import load_task
from hpcrobust.tasks.fit import Budget, Limit, fits
from hpcrobust.tasks.placement import clean_ids, encode, leading_specials
from hpcrobust.training.trainer import pad_batch, predict


def _family_tokenizer_file(cache: Path) -> str:
    return glob.glob(str(cache / "family-*" / "tokenizer" / "tokenizer.json"))[0]


def _family_tokenizer(cache: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=_family_tokenizer_file(cache), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _llama_tokenizer(cache: Path):
    """The family's BPE with a `<s>` that the post-processor puts first, as Llama's and Gemma's tokenizers do."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_file(_family_tokenizer_file(cache))
    tk.add_special_tokens(["<s>"])
    bos = tk.token_to_id("<s>")
    tk.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def task(family_cache):
    return load_task(TaskConfig(name="password_match", n_train=8, n_val=8))


def test_gpt2_actual_flops_count_its_conv1d_layers(tmp_path, family_cache):
    """GPT-2 multiplies by transformers' Conv1D (a transposed nn.Linear), which the nn.Linear count missed: actual
    FLOPs were about 6x low. Now the layers' weights give 2·N·T (N: the weights applied to every token)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    tok = _family_tokenizer(family_cache)
    torch.manual_seed(0)
    d, n_layers = 64, 2
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=n_layers, n_head=4, n_positions=64,
                                    eos_token_id=0, bos_token_id=0))
    lm.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    tok.save_pretrained(tmp_path / "gpt2")
    clf = load_classifier(ModelConfig(name_or_path=str(tmp_path / "gpt2")), FamilyConfig(), torch.device("cpu"),
                          seed=0)
    conv = sum(m.weight.numel() for m in clf.backbone.h.modules() if isinstance(m, Conv1D))
    assert conv == 12 * n_layers * d * d and clf.shape.layer_linear_params == conv
    b, t = 4, 16
    ids, mask = pad_batch([list(range(1, t + 1))] * b, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        clf.logits(ids, mask)
    actual = clf.meter.total.actual
    per_token = 2 * conv  # 2·N·T over the weights every token meets
    attention = 4 * n_layers * b * t * t * d
    head = 2 * b * d * 2
    assert actual == per_token * b * t + attention + head
    ratio = actual / (per_token * b * t)
    before = (attention + head) / (per_token * b * t)  # what the nn.Linear-only count gave
    print(f"GPT-2 actual / 2·N·T: {ratio:.3f} (before: {before:.3f}, {ratio / before:.1f}x low)")
    assert 1.0 <= ratio < 1.3 and before < 0.3


def test_llama_style_tokenizer_starts_every_prompt_with_its_bos(tmp_path, family_cache, task):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _llama_tokenizer(family_cache)
    bos = tok.bos_token_id
    ex = task.train[0]
    assert tok(ex.instructions)["input_ids"][0] == bos  # the tokenizer's own default
    assert leading_specials(tok) == [bos]
    ids = clean_ids(tok, ex)
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[: len(tok(ex.instructions)["input_ids"])] == tok(ex.instructions)["input_ids"]
    for placement in ("suffix", "prefix", "infix", "overwrite"):
        assert encode(tok, ex, placement).before[0] == bos, placement
    # the context check counts the BOS once: it is in the sequence, not reserved again beside it
    assert fits(ex, [Limit("llama", tok, len(ids))], Budget()) and not fits(ex, [Limit("llama", tok, len(ids) - 1)],
                                                                         Budget())

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                      bos_token_id=bos, eos_token_id=0, pad_token_id=0))
    lm.save_pretrained(tmp_path / "llama", safe_serialization=True)
    tok.save_pretrained(tmp_path / "llama")
    clf = load_classifier(ModelConfig(name_or_path=str(tmp_path / "llama")), FamilyConfig(), torch.device("cpu"),
                          seed=0)
    assert leading_specials(clf.tokenizer) == [bos]  # saved and loaded back, the default holds
    seqs = [clean_ids(clf.tokenizer, e) for e in task.val]
    assert all(s[0] == bos for s in seqs)
    pred, margin = predict(clf, seqs, 4, Comm(None))
    assert pred.shape == (len(seqs),) and torch.isfinite(torch.from_numpy(margin)).all()


def test_tokenizers_that_add_nothing_get_nothing(family_cache, task):
    """GPT-NeoX (Pythia) and the built-in family add no BOS by default: their prompts, and so every stored number of
    the built-in family, are unchanged."""
    tok = _family_tokenizer(family_cache)
    assert leading_specials(tok) == []
    ex = task.train[0]
    plain = [t for text in (ex.instructions, ex.content, ex.slot, ex.answer_prompt) if text
             for t in tok.encode(text, add_special_tokens=False)]
    assert clean_ids(tok, ex) == plain
    from hpcrobust.config import load_config
    from tests.conftest import TINY

    clf = load_classifier(ModelConfig(name_or_path="builtin:xs"), load_config(TINY).family, torch.device("cpu"),
                          seed=0)
    assert clf.tokenizer.bos_token_id is not None and leading_specials(clf.tokenizer) == []
