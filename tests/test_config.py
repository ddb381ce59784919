"""Config parsing: typed dataclasses, overrides, and one-line errors that name the key and file."""

from __future__ import annotations

import pytest

from hpcrobust.config import SweepConfig, config_from_dict, describe, load_config, science_hash
from hpcrobust.errors import UserError


def test_defaults_and_types():
    cfg = config_from_dict({})
    assert isinstance(cfg, SweepConfig)
    assert cfg.finetune.lr > 0 and cfg.models[0].name_or_path.startswith("builtin:")


def test_model_shorthand_and_overrides():
    cfg = config_from_dict({"models": ["builtin:s", "builtin:m"]},
                           ["models.1.label=big", "finetune.lr=1e-5", "seeds=[3,4]", "output=x.h5"])
    assert [m.name_or_path for m in cfg.models] == ["builtin:s", "builtin:m"]
    assert cfg.models[1].label == "big"
    assert cfg.finetune.lr == 1e-5  # YAML 1.1 reads 1e-5 as a string; floats accept it
    assert cfg.seeds == [3, 4] and cfg.output == "x.h5"


@pytest.mark.parametrize("data,override,needle", [
    ({"finetune": {"lrr": 1}}, [], "unknown key 'finetune.lrr'"),
    ({}, ["task.nme=x"], "unknown key 'task.nme'"),
    ({"finetune": {"epochs": "two"}}, [], "finetune.epochs: expected float"),
    ({"seeds": 3}, [], "seeds: expected a list"),
    ({"task": {"n_train": 1}}, [], "task.n_train: 1 is below the minimum 2"),
    ({"task": {"name": "nope"}}, [], "task.name: 'nope' is not one of"),
    ({"attacks": [{"name": "a", "infix_fraction": 1.5}]}, [], "attacks.0.infix_fraction: 1.5 is above"),
    ({"attacks": [{"name": "a", "n_attack_tokens": 0}]}, [], "attacks.0.n_attack_tokens: 0 is below"),
    ({"parallel": {"ranks_per_group": True}}, [], "expected int"),
    ({}, ["models.5.label=x"], "no item models.5"),
    ({}, ["novalue"], "expected key.sub=value"),
    ({"task": {"name": "spam"}}, [], "task.path"),
    ({"finetune": {"batch_size": 32, "micro_batch_size": 5}}, [], "does not divide"),
])
def test_bad_values_name_the_key(data, override, needle):
    with pytest.raises(UserError) as e:
        config_from_dict(data, override, source="cfg.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("cfg.yaml:") and "\n" not in msg


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    py = tmp_path / "evil.yaml"
    py.write_text("output: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError):  # safe_load refuses python tags
        load_config(py)


def test_science_hash_ignores_paths_and_launch_but_not_science():
    a = config_from_dict({}, ["output=a.h5", "launch.nodes=3", "parallel.threads_per_rank=2"])
    b = config_from_dict({}, ["output=b.h5"])
    c = config_from_dict({}, ["finetune.lr=0.5"])
    assert science_hash(a) == science_hash(b) != science_hash(c)
    moved = config_from_dict({}, ["family.cache_dir=/elsewhere"])  # where the built family is kept: not science
    assert science_hash(moved) == science_hash(b) != science_hash(config_from_dict({}, ["family.seed=1"]))
    assert science_hash(b, {"task.path": "x"}) != science_hash(b, {"task.path": "y"}) != science_hash(b)


def test_describe_lists_every_key():
    keys = {k for k, _, _ in describe()}
    assert {"output", "finetune.lr", "models.N.name_or_path", "attacks.N.topk", "launch.slurm_partition"} <= keys
    assert all(doc for k, _, doc in describe() if not k.startswith("launch.slurm_additional"))


def test_every_shipped_config_parses_and_paper_configs_match_the_paper():
    from tests.conftest import ROOT

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)  # raises on any unknown key or bad value
    papers = (("paper_pythia", "pythia-14m", "pythia-12b"), ("paper_qwen", "Qwen2.5-0.5B", "Qwen2.5-14B"))
    for name, first, last in papers:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.models[0].name_or_path.endswith(first) and cfg.models[-1].name_or_path.endswith(last)
        assert not any(m.trust_remote_code for m in cfg.models)
        assert (cfg.finetune.lr, cfg.finetune.epochs) == (1e-5, 3)
        gcg = next(a for a in cfg.attacks if a.name == "gcg_suffix")
        assert (gcg.n_attack_tokens, gcg.params.search_width, gcg.params.topk) == (10, 128, 256)
        assert (gcg.n_iterations, gcg.n_examples) == (128, 500)
        assert {a.placement for a in cfg.attacks if a.type == "gcg"} == {"suffix", "infix", "prefix"}
        assert {a.type for a in cfg.attacks} == {"gcg", "beast", "random_token"}
        at = cfg.advtrain
        assert (at.n_new_examples, at.max_examples, at.max_adv_fraction) == (200, 1000, 0.8)
        assert (at.iterations_start, at.iterations_end) == (8, 64)
