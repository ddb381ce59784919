"""The paper configs and the README's "Paper settings" table say the same thing, and the configs hang together.

The table is the documentation of record (each value with the reference file that defines it); this test
reads it, so a config edited without the README, or a README row edited without the configs, fails here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import yaml

from hpcrobust.config import SweepConfig, load_config, to_dict
from tests.conftest import ROOT

CONFIGS = {"Pythia": "paper_pythia.yaml", "Qwen": "paper_qwen.yaml"}
# what may differ between the two families' configs (everything else must be equal)
FAMILY_KEYS = {"output", "seeds", "models", "experiment"}
FAMILY_ATTACK_KEYS = {"sampler"}


def paper_rows() -> list[dict[str, str]]:
    """The rows of the README's Paper settings table, as {column: cell}."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Paper settings\n", 1)[1].split("\n#", 1)[0]  # up to the next heading
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(header), ln
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def resolve(cfg: SweepConfig, path: str) -> Any:
    """`a.b.c` on the typed config: list entries by name (attacks.gcg_suffix) or all of them (`*`); an attack's
    own keys are looked up in its params."""
    nodes: list[Any] = [cfg]
    star = False
    for part in path.split("."):
        nxt = []
        for node in nodes:
            if isinstance(node, list):
                if part == "*":
                    nxt += node
                    star = True
                    continue
                named = [x for x in node if getattr(x, "name", None) == part]
                assert len(named) == 1, f"{path}: no single entry named {part}"
                nxt.append(named[0])
            elif dataclasses.is_dataclass(node) and hasattr(node, part):
                nxt.append(getattr(node, part))
            elif hasattr(getattr(node, "params", None), part):
                nxt.append(getattr(node.params, part))
            else:
                raise AssertionError(f"{path}: {type(node).__name__} has no key {part}")
        nodes = nxt
    return nodes if star else nodes[0]


def same_value(actual: Any, stated: Any) -> bool:
    if isinstance(actual, list) and not isinstance(stated, list):
        return len(actual) > 0 and all(a == stated for a in actual)
    return actual == stated


@pytest.fixture(scope="module")
def configs() -> dict[str, SweepConfig]:
    return {fam: load_config(ROOT / "configs" / name) for fam, name in CONFIGS.items()}


def test_every_row_of_the_readme_table_is_what_the_configs_hold(configs):
    rows = paper_rows()
    assert len(rows) >= 30
    for row in rows:
        keys = ticked(row["key"])
        assert keys and row["defined in the reference"].strip(), row
        for fam in CONFIGS:
            cell = row[fam] if row[fam] != "same" else row["Pythia"]
            values = ticked(cell)
            assert len(values) == len(keys), f"{row['setting']}: {len(keys)} keys, {len(values)} values for {fam}"
            for key, text in zip(keys, values, strict=True):
                actual, stated = resolve(configs[fam], key), yaml.safe_load(text)
                assert same_value(actual, stated), f"{fam} {key}: config has {actual!r}, README says {stated!r}"


def test_the_table_covers_what_makes_the_experiment():
    """The settings the issue names have a row each."""
    keys = {k for row in paper_rows() for k in ticked(row["key"])}
    for needed in ("finetune.optimizer", "finetune.batch_size", "models.*.torch_dtype", "seeds", "models.*.rounds",
                   "advtrain.n_new_examples", "advtrain.max_examples", "advtrain.max_adv_fraction",
                   "advtrain.iterations_start", "advtrain.iterations_end", "attacks.gcg_suffix.search_width",
                   "attacks.beast.beam_width", "attacks.beast.n_iterations", "attacks.rt.n_iterations",
                   "attacks.*.early_stop"):
        assert needed in keys, needed


def test_the_two_families_differ_only_in_their_models(configs):
    py, qw = (to_dict(configs[f]) for f in CONFIGS)
    assert set(py) == set(qw)
    for key in set(py) - FAMILY_KEYS:
        if key == "advtrain":
            assert {k: v for k, v in py[key].items() if k != "rounds"} == \
                   {k: v for k, v in qw[key].items() if k != "rounds"}
        elif key == "attacks":
            strip = [[{k: v for k, v in a.items() if k not in FAMILY_ATTACK_KEYS} for a in c[key]] for c in (py, qw)]
            assert strip[0] == strip[1]
        else:
            assert py[key] == qw[key], key


@pytest.mark.parametrize("family", list(CONFIGS))
def test_a_paper_config_hangs_together(configs, family):
    cfg = configs[family]
    rounds = [m.rounds for m in cfg.models]
    assert all(r >= 1 for r in rounds) and cfg.advtrain.rounds == max(rounds)
    assert rounds == sorted(rounds, reverse=True)  # larger sizes never train longer
    # each size's last round runs the training attack at iterations_end (the reference ramps per run)
    assert all(cfg.advtrain.scheduled_iterations(r, r) == cfg.advtrain.iterations_end for r in rounds)
    assert cfg.finetune.batch_size % cfg.finetune.micro_batch_size == 0
    assert all(a.n_examples <= cfg.task.n_val for a in cfg.attacks)
    gcg = [a for a in cfg.attacks if a.type == "gcg"]
    assert {a.placement for a in gcg} == {"suffix", "infix", "prefix"}
    budget = {(a.n_iterations, a.n_examples, a.n_attack_tokens, a.params.search_width, a.params.topk,
               a.params.buffer_size, a.params.init_string) for a in gcg}
    assert len(budget) == 1, budget  # one GCG budget, whatever the placement
    train = cfg.train_attack()
    assert train.type == "gcg"
    assert {k: getattr(train.params, k) for k in ("search_width", "topk", "buffer_size", "init_string")} == \
           {k: getattr(gcg[0].params, k) for k in ("search_width", "topk", "buffer_size", "init_string")}
    for a in [*gcg, train]:  # the reference's filler: "@&" repeated, one token per character
        n = a.n_attack_tokens
        assert a.params.init_string == "@&" * (n // 2) + "@" * (n % 2)
    (beast,) = [a for a in cfg.attacks if a.type == "beast"]
    assert beast.n_attack_tokens == beast.n_iterations  # one token per iteration
    assert beast.params.sampler == cfg.models[0].name_or_path  # the family's smallest model
    for a in [*cfg.attacks, *cfg.train_attacks]:
        assert a.params.early_stop is False and a.params.ascii_only is False, a.name
