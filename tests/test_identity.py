"""What a results file is tied to: a resumed sweep must use the same task file and the same model files,
while moving the family cache keeps the file resumable; and --quiet prints nothing."""

from __future__ import annotations

import hashlib
import shutil

from tests.conftest import run_cli
from tests.test_hf_models import _family_tokenizer, _save_model

FAST = ["seeds=[0]", "attacks=[]", "parallel.threads_per_rank=1", "--quiet"]


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _refused(proc, needle: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert needle in lines[0], lines[0]


def test_a_changed_task_file_is_refused_and_a_moved_cache_is_not(tiny, family_cache):
    cwd = tiny.parent
    data = cwd / "spam.jsonl"
    data.write_text("".join(f'{{"text": "mail {i}", "label": {i % 2}}}\n' for i in range(40)))
    args = ["run", str(tiny), "task.name=spam", "task.path=spam.jsonl", "task.n_train=30", "task.n_val=10",
            "models=[builtin:xs]", *FAST]
    first = run_cli(args, cwd=cwd)
    assert first.returncode == 0 and first.stderr == "", first.stderr  # --quiet: not a line, not a progress bar
    out = cwd / "out.h5"
    before = _sha(out)
    moved = cwd / "moved-cache"
    shutil.copytree(family_cache, moved)  # the same built family, somewhere else
    again = run_cli([*args, f"family.cache_dir={moved}"], cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert _sha(out) == before  # resumed: everything was committed, nothing recomputed
    data.write_text(data.read_text().replace("mail 3", "mail three"))
    _refused(run_cli(args, cwd=cwd), "different config (the contents of task.path differ)")
    assert _sha(out) == before and not (cwd / "out.h5.lock").exists()


def test_changed_model_weights_are_refused(tiny, family_cache):
    cwd = tiny.parent
    folder = _save_model("gpt_neox", _family_tokenizer(family_cache), cwd / "m")
    args = ["run", str(tiny), f"models=[{folder}]", *FAST]
    assert run_cli(args, cwd=cwd).returncode == 0
    before = _sha(cwd / "out.h5")
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1  # one bit of one weight: a retrained model
    weights.write_bytes(bytes(raw))
    _refused(run_cli(args, cwd=cwd), "the contents of models.0 differ")
    assert _sha(cwd / "out.h5") == before
