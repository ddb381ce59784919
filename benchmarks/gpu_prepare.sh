#!/usr/bin/env bash
# Run HERE (a machine with pip access) before carrying the tree to a GPU machine that cannot download:
# fills .gpu/ (git-ignored) with what benchmarks/gpu_check.sh needs there and the GPU image lacks.
#   .gpu/wheels    hpcrobust's dependencies missing from a stock CUDA PyTorch image (Python 3.12, x86-64)
#   .gpu/nanogcg   nanoGCG 0.3.0 with the transformers it pins (<= 4.47.1), installed apart from hpcrobust's
#   .gpu/cache     the built-in family, already built (saves its build on the GPU machine)
# Then: carry .gpu with the tree and run `bash benchmarks/gpu_check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/nanogcg
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .gpu/wheels submitit==1.5.3 english-words==2.0.2 mpich==4.3.2
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .gpu/nanogcg nanogcg==0.3.0 transformers==4.47.1 \
    tokenizers==0.21.0 huggingface-hub==0.26.5
cache=${HPCROBUST_CACHE:-$HOME/.cache/hpcrobust}
"$PY" -c "from hpcrobust.config import FamilyConfig; from hpcrobust.models import family;
family.ensure_built(FamilyConfig(), ['s', 'm', 'l'])"
cp -r "$cache" .gpu/cache
du -sh .gpu/*
