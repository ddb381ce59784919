"""Any Hugging Face causal LM as a 2-label classifier: from a folder or the offline HF cache."""

from __future__ import annotations

import glob
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from hpcrobust.config import FamilyConfig, ModelConfig
from hpcrobust.errors import UserError
from hpcrobust.models.loading import load_classifier, model_config
from hpcrobust.store.reader import load
from hpcrobust.training.trainer import pad_batch
from tests.conftest import run_cli


def _family_tokenizer(cache: Path):
    from transformers import PreTrainedTokenizerFast

    path = glob.glob(str(cache / "family-*" / "tokenizer" / "tokenizer.json"))[0]
    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _save_model(arch: str, tok, out: Path, tied: bool = False) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "gpt_neox":
        m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, eos_token_id=0))
    else:
        m = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                         eos_token_id=0, tie_word_embeddings=tied))
    m.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["gpt_neox", "qwen2"])
def test_last_token_logits_match_hf(tmp_path, family_cache, arch):
    from transformers import AutoModelForSequenceClassification

    path = _save_model(arch, _family_tokenizer(family_cache), tmp_path / arch)
    clf = load_classifier(ModelConfig(name_or_path=str(path)), FamilyConfig(), torch.device("cpu"), seed=0)
    assert clf.tokenizer.pad_token_id == clf.tokenizer.eos_token_id
    seqs = [clf.tokenizer.encode("System password: a"), clf.tokenizer.encode("hello there friend, hi")]
    ids, mask = pad_batch(seqs, clf.tokenizer.pad_token_id, torch.device("cpu"))
    ours = clf.logits(ids, mask)
    ref = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    ref.score.load_state_dict(clf.head.state_dict())
    ref.config.pad_token_id = clf.tokenizer.pad_token_id
    with torch.no_grad():
        theirs = torch.stack([ref(input_ids=torch.tensor([s])).logits[0] for s in seqs])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    again = load_classifier(ModelConfig(name_or_path=str(path)), FamilyConfig(), torch.device("cpu"), seed=0)
    assert torch.equal(again.head.weight, clf.head.weight)  # head init keyed by (seed, model)


def _hf_cache_entry(hf_home: Path, repo: str, src: Path) -> None:
    snap = hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    shutil.copytree(src, snap)
    refs = snap.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)


def test_sweep_on_folder_and_offline_cache(tmp_path, tiny, family_cache):
    tok = _family_tokenizer(family_cache)
    folder = _save_model("gpt_neox", tok, tmp_path / "neox")
    hf_home = tmp_path / "hf"
    _hf_cache_entry(hf_home, "acme/tiny-neox", folder)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(["run", str(tiny), f"models=[{folder}, acme/tiny-neox]", "models.1.pretrain_flops=1e9",
                    "seeds=[0]", "attacks=[]", "--quiet"], cwd=tiny.parent, env=env)
    assert proc.returncode == 0, proc.stderr
    df = load(tiny.parent / "out.h5")
    assert sorted(df.model_label) == ["neox", "tiny-neox"]
    assert df.set_index("model_label").pretrain_flops["tiny-neox"] == 1e9
    missing = run_cli(["run", str(tiny), "models=[acme/not-there]"], cwd=tiny.parent, env=env)
    assert missing.returncode == 2 and "not loadable from the HF cache" in missing.stderr


def test_remote_code_stays_off(tmp_path, family_cache):
    folder = _save_model("gpt_neox", _family_tokenizer(family_cache), tmp_path / "m")
    cfg_path = folder / "config.json"
    text = cfg_path.read_text().replace('"model_type": "gpt_neox"', '"model_type": "custom_thing"')
    cfg_path.write_text(text.replace("{", '{"auto_map": {"AutoConfig": "evil.Cfg"},', 1))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    os.environ["HF_HUB_OFFLINE"] = "1"
    with pytest.raises(UserError):
        model_config(ModelConfig(name_or_path=str(folder)), FamilyConfig())


@pytest.mark.parametrize("name,arch,tied", [("pythia-tiny", "gpt_neox", False), ("Qwen2.5-tiny", "qwen2", True),
                                            ("Qwen2.5-tiny-untied", "qwen2", False)])
def test_pretraining_compute_follows_the_reference_per_family(tmp_path, family_cache, name, arch, tied):
    """Bug 3: N counts each distinct matrix once (a tied embedding once; Pythia without its output embedding),
    D is the reference's per family and size; N and D are kept next to 6·N·D."""
    from transformers import AutoModelForCausalLM

    from hpcrobust.models.pretrain import PYTHIA_TOKENS, QWEN25_TOKENS

    path = _save_model(arch, _family_tokenizer(family_cache), tmp_path / name, tied)
    lm = AutoModelForCausalLM.from_pretrained(path)
    assert lm.config.tie_word_embeddings == tied
    unique = sum(p.numel() for p in lm.parameters())  # parameters() lists a tied matrix once
    out_emb = lm.get_output_embeddings().weight.numel()
    clf = load_classifier(ModelConfig(name_or_path=str(path)), FamilyConfig(), torch.device("cpu"), seed=0)
    pre = clf.pretraining
    n_expected = unique - out_emb if arch == "gpt_neox" else unique
    d_expected = PYTHIA_TOKENS if arch == "gpt_neox" else QWEN25_TOKENS[0]  # a model this small is a "0.5B"
    assert (pre.n, pre.tokens, pre.flops) == (n_expected, d_expected, 6.0 * n_expected * d_expected)
    unknown = _save_model(arch, _family_tokenizer(family_cache), tmp_path / "other")
    assert math.isnan(load_classifier(ModelConfig(name_or_path=str(unknown)), FamilyConfig(), torch.device("cpu"),
                                      seed=0).pretrain_flops)
