#!/usr/bin/env bash
# Create a Python 3.11 virtual environment with parallel HDF5:
#   system MPICH (Debian) + mpi4py wheel linked to it + h5py built from source with MPI.
#
# Usage: .ci/setup_phdf5.sh VENV_DIR [REPO_DIR]
#
#   VENV_DIR  where the venv goes (created if missing).
#   REPO_DIR  optional; if given, `pip install --no-deps -e REPO_DIR` runs at the end
#             (never with the [mpich] extra: the pip `mpich` wheel must not be in this venv).
#
# Idempotent: if VENV_DIR already has an h5py with get_config().mpi == True (plus mpi4py and
# the other packages importable), the build is skipped.
#
# Environment overrides:
#   PYTHON        interpreter for the venv (default: python3.11)
#   H5PY_VERSION  h5py version to build (default: latest sdist on the index)
#
# Run MPI programs from this venv with the system MPICH launcher, e.g.
#   /usr/bin/mpiexec.mpich -n 2 VENV_DIR/bin/python x.py
# not with the mpiexec of any venv that has the pip `mpich` wheel.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 VENV_DIR [REPO_DIR]" >&2
    exit 2
fi
VENV_DIR=$1
REPO_DIR=${2:-}
PYTHON=${PYTHON:-python3.11}

T_START=$(date +%s)
T_STEP=$T_START
step() { # step NAME: print time spent since the previous mark
    local now
    now=$(date +%s)
    printf '[setup_phdf5] %-28s %4ds (total %4ds)\n' "$1" $((now - T_STEP)) $((now - T_START))
    T_STEP=$now
}
log() { echo "[setup_phdf5] $*"; }

MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
LIBDIR=/usr/lib/$MULTIARCH
HDF5_MPICH_DIR=$LIBDIR/hdf5/mpich
APT_PKGS=(mpich libmpich-dev libhdf5-mpich-dev)
# Everything else the project needs in this venv. torch is pinned: a CPU wheel is on local
# disk; unpinned, pip pulls a multi-GB CUDA build.
PIP_PKGS=(torch==2.13.0 transformers numpy pyyaml safetensors tqdm matplotlib pandas submitit
          tokenizers english-words pytest)
IMPORTS="torch, transformers, numpy, yaml, safetensors, tqdm, matplotlib, pandas, submitit, tokenizers, english_words, pytest"

VPY=$VENV_DIR/bin/python

h5py_mpi_ok() {
    [[ -x $VPY ]] && "$VPY" - <<'EOF' >/dev/null 2>&1
import h5py, mpi4py.MPI
assert h5py.get_config().mpi
EOF
}

rest_ok() {
    [[ -x $VPY ]] && "$VPY" -c "import $IMPORTS" >/dev/null 2>&1
}

install_repo() {
    if [[ -n $REPO_DIR ]]; then
        "$VPY" -m pip install -q --no-deps -e "$REPO_DIR"
        step "pip install -e REPO_DIR"
    fi
}

if h5py_mpi_ok && rest_ok; then
    log "$VENV_DIR already has h5py with MPI; skipping build"
    step "check existing venv"
    install_repo
    step "done"
    exit 0
fi

# 1. System MPICH and parallel HDF5 (MPICH flavour).
if dpkg -s "${APT_PKGS[@]}" >/dev/null 2>&1; then
    log "apt packages already installed"
else
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}"
    fi
fi
step "apt mpich + hdf5-mpich"

# 2. The mpi4py wheel dlopens libmpi.so.12; Debian names MPICH's library libmpich.so.12.
if [[ ! -e $LIBDIR/libmpi.so.12 ]]; then
    ln -sf libmpich.so.12 "$LIBDIR/libmpi.so.12"
    ldconfig
elif [[ $(readlink -f "$LIBDIR/libmpi.so.12") != $(readlink -f "$LIBDIR/libmpich.so.12") ]]; then
    log "WARNING: $LIBDIR/libmpi.so.12 exists and is not MPICH ($(readlink -f "$LIBDIR/libmpi.so.12")); leaving it"
fi
step "libmpi.so.12 link"

# 3. The venv, with build tools new enough for h5py's pyproject.
if [[ ! -x $VPY ]]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
"$VPY" -m pip install -q -U pip setuptools wheel cython pkgconfig
step "venv + build tools"

# 4. Runtime packages first, so that h5py is compiled against the numpy that stays.
"$VPY" -m pip install -q "${PIP_PKGS[@]}"
step "torch, transformers, ..."

# 5. mpi4py wheel (no compiling thanks to the link), WITHOUT the pip mpich package.
"$VPY" -m pip install -q mpi4py
step "mpi4py"

# 6. h5py from source against parallel HDF5.
if h5py_mpi_ok; then
    log "h5py with MPI already present"
else
    H5PY_REQ=h5py${H5PY_VERSION:+==$H5PY_VERSION}
    # Speed: compile the extensions in parallel (setuptools reads DIST_EXTRA_CONFIG) and without
    # debug info (-g0): on 2 cores this cuts the build from about 290 s to about 70 s, most of
    # what is left being the (serial) cythonize step.
    EXTRA_CFG=$(mktemp)
    trap 'rm -f "$EXTRA_CFG"' EXIT
    printf '[build_ext]\nparallel = %s\n' "$(nproc)" >"$EXTRA_CFG"
    h5py_build() {
        CC=mpicc.mpich HDF5_MPI=ON HDF5_DIR=$HDF5_MPICH_DIR \
        CFLAGS="${CFLAGS:-} -g0" DIST_EXTRA_CONFIG=$EXTRA_CFG \
            "$VPY" -m pip install -q --force-reinstall --no-deps --no-binary=h5py \
            --no-build-isolation "$@" "$H5PY_REQ"
    }
    # pip may reuse a wheel it built before; if that one lacks MPI, build anew without cache.
    h5py_build
    if ! h5py_mpi_ok; then
        log "cached h5py build has no MPI; rebuilding without cache"
        h5py_build --no-cache-dir
    fi
    "$VPY" -m pip install -q "$H5PY_REQ"   # h5py's own deps (numpy), already satisfied
fi
step "h5py (MPI build)"

# The pip mpich wheel would put a second MPI into the process and break everything.
if "$VPY" -m pip show -q mpich >/dev/null 2>&1; then
    log "WARNING: pip mpich package found in $VENV_DIR; uninstalling it"
    "$VPY" -m pip uninstall -y -q mpich
fi

if ! h5py_mpi_ok; then
    echo "[setup_phdf5] ERROR: h5py in $VENV_DIR is not built with MPI" >&2
    exit 1
fi
"$VPY" - <<'EOF'
import h5py, mpi4py, mpi4py.MPI as MPI
print("[setup_phdf5] h5py", h5py.__version__, "HDF5", h5py.version.hdf5_version,
      "mpi", h5py.get_config().mpi, "| mpi4py", mpi4py.__version__, "|",
      MPI.Get_library_version().splitlines()[0])
EOF

install_repo
step "done"
