#!/usr/bin/env bash
# The GPU check (issue 12): one script, at most 8 minutes on one GPU, every figure printed as a ratio.
#   1. the quickstart on CUDA in bf16 (clean accuracy and GCG-suffix ASR per size);
#   2. a GCG step on a Pythia-410m-shaped model, hpcrobust against nanoGCG on the same GPU (bf16);
#   3. candidate-scoring FLOP/s as a fraction of a bf16 matmul rate measured in the same run.
# On a machine without downloads, first run benchmarks/gpu_prepare.sh where pip works and carry .gpu/.
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d .gpu/wheels ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_site .gpu/wheels/*.whl
    export PYTHONPATH="$PWD:/tmp/gpu_site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d .gpu/cache ] && export HPCROBUST_CACHE="$PWD/.gpu/cache"
NANO=""
if [ -d .gpu/nanogcg ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/nanogcg_site .gpu/nanogcg/*.whl
    printf '#!/bin/sh\nPYTHONPATH=/tmp/nanogcg_site exec %s "$@"\n' "$(command -v "$PY")" > /tmp/nanogcg_python
    chmod +x /tmp/nanogcg_python
    NANO=/tmp/nanogcg_python
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" || exit 1
status=0
step() { echo "== $1"; shift; local t0=$SECONDS; "$@" || { echo "!! failed (rc $?)"; status=1; }
         echo "   ($((SECONDS - t0)) s)"; }

hpc() { "$PY" -c 'import sys; from hpcrobust.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
rm -f "$OUT/quickstart_bf16.h5"
step "1. quickstart on CUDA, bf16" timeout 240 hpc run configs/quickstart.yaml --quiet \
    output="$OUT/quickstart_bf16.h5" parallel.device=cuda \
    models.0.torch_dtype=bfloat16 models.1.torch_dtype=bfloat16 models.2.torch_dtype=bfloat16
step "   quickstart figures" "$PY" benchmarks/gpu_check.py quickstart "$OUT/quickstart_bf16.h5"
step "2. GCG step, Pythia-410m shape, bf16: hpcrobust vs nanoGCG" timeout 180 "$PY" benchmarks/gcg_step.py \
    --shape pythia-410m --device cuda --dtype bfloat16 --search-width 512 --topk 256 --suffix 20 --steps 5 \
    ${NANO:+--nanogcg-python "$NANO"}
step "3. candidate scoring vs bf16 matmul" timeout 90 "$PY" benchmarks/gpu_check.py scoring --shape pythia-410m
exit $status
