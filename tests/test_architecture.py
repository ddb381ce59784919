"""The package's shape: no import circle, no import up a layer, and an analysis that runs without torch."""

from __future__ import annotations

import subprocess
import sys

from hpcrobust.analysis.synthetic import SynthSpec, default_sizes, write_synthetic
from tests.conftest import ROOT


def test_no_import_circle_and_no_import_up_a_layer():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout
    drawing = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True,
                             text=True).stdout
    arrows = {line.split("->")[0].strip(): line.split("->")[1] for line in drawing.splitlines() if "->" in line}
    assert "attacks" in arrows["sweep"] and "training" in arrows["sweep"]
    for low in ("store", "tasks", "models", "parallel"):
        assert "sweep" not in arrows[low] and "attacks" not in arrows[low] and "training" not in arrows[low]


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph as ig
    finally:
        sys.path.pop(0)
    graph = {"hpcrobust.store.a": {"hpcrobust.store.b"}, "hpcrobust.store.b": {"hpcrobust.store.a"},
             "hpcrobust.models.c": {"hpcrobust.sweep.d"}, "hpcrobust.sweep.d": set()}
    assert ig.cycles(graph) == [["hpcrobust.store.a", "hpcrobust.store.b"]]
    assert ig.upward(graph) == [("hpcrobust.models.c", "hpcrobust.sweep.d")]


def test_analysis_imports_neither_torch_nor_mpi4py(tmp_path):
    path = tmp_path / "synthetic.h5"
    write_synthetic(path, SynthSpec(sizes=default_sizes(3), seeds=[0], rounds=1, n_examples=32))
    code = ("import sys; import hpcrobust.analysis; from hpcrobust.cli import main;"
            f" rc = main(['analyze', {str(path)!r}, '--out', {str(tmp_path / 'report')!r}]);"
            " heavy = sorted(m for m in ('torch', 'mpi4py', 'transformers') if m in sys.modules);"
            " print(rc, heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["0", "[]"], proc.stdout
    assert (tmp_path / "report" / "report.md").is_file()
