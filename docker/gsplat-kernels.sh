#!/bin/sh
# gsplat 1.5.3's CUDA kernels compiled ahead of time into a Python environment, with the
# machine's CUDA 13 toolkit where it has a whole one (nvcc and cuda_runtime.h, looked for in
# CUDA_SEARCH: by default CUDA_HOME, the toolkit that nvcc on PATH links into, /usr/local/cuda),
# else NVIDIA's CUDA 13.0 compiler from PyPI: no CUDA toolkit is needed on the machine, and no
# GPU (name the architectures). The one recipe, used by the Dockerfile's gpu-venv stage and by
# `make gpu-check` (docs/DEPLOY.md, "Images").
#
#   sh docker/gsplat-kernels.sh PYTHON CUDA_DIR
#
# PYTHON    the environment's interpreter; torch 2.14.1 (the CUDA 13.0 build) and gsplat 1.5.3
#           (PyPI's pure-Python wheel, for its dependencies) are installed in it
# CUDA_DIR  where the compiler from PyPI goes (emptied first): outside the environment, and
#           deletable afterwards
# TORCH_CUDA_ARCH_LIST  the GPU architectures, e.g. "9.0" (default: those of the GPUs torch
#           sees); each takes about 6 min on 2 cores.  MAX_JOBS: parallel compiles.
# CUDA_TOOLKIT  the `cuda-toolkit` release (default 13.0.3.0: nvcc 13.0, torch's CUDA).
# Package-index settings are pip's own (pip.conf, PIP_* variables).
#
# gsplat's setup.py asks nvcc for C++17, and torch 2.14's headers need C++20 (`operator<=>`
# in c10/util/intrusive_ptr.h): that one flag is raised before the build, and nothing else.
# Where gsplat already loads compiled kernels, nothing is done.
set -eu
[ $# -eq 2 ] || { echo "usage: sh $0 PYTHON CUDA_DIR" >&2; exit 2; }
PY=$1
CUDA_DIR=$2
GSPLAT=1.5.3
CUDA_TOOLKIT=${CUDA_TOOLKIT:-13.0.3.0}

if "$PY" -c "from gsplat import csrc" 2>/dev/null; then
    echo "gsplat-kernels: gsplat already loads its compiled kernels"
    exit 0
fi
"$PY" -c "import torch; assert torch.version.cuda == '13.0', f'torch {torch.__version__} is not the CUDA 13.0 build'"

# A CUDA 13 toolkit already here, whole (nvcc and the runtime's headers); torch refuses another
# major version than its own. nvcc on PATH may be a link into the toolkit: followed (a wrapper
# script is not a toolkit, and /usr/local/cuda is then looked at).
HERE=""
NVCC_ON_PATH=$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent)" 2>/dev/null || true)
for d in ${CUDA_SEARCH-"${CUDA_HOME:-}" "${NVCC_ON_PATH%/bin/nvcc}" /usr/local/cuda}; do
    if [ -n "$d" ] && [ -x "$d/bin/nvcc" ] && [ -f "$d/include/cuda_runtime.h" ] \
        && "$d/bin/nvcc" --version 2>/dev/null | grep -q "release 13\."; then
        HERE=$d
        break
    fi
done
if [ -n "$HERE" ]; then
    echo "gsplat-kernels: using the CUDA 13 toolkit at $HERE"
    export CUDA_HOME="$HERE"
else
    mkdir -p "$CUDA_DIR"
    CUDA_DIR=$(cd "$CUDA_DIR" && pwd)  # absolute: pip builds gsplat from another folder
    echo "gsplat-kernels: no CUDA 13 toolkit here; NVIDIA's compiler from PyPI goes to $CUDA_DIR"
    rm -rf "$CUDA_DIR"  # an interrupted download is not built with (pip --target keeps what it finds)
    "$PY" -m pip install --no-cache-dir --target "$CUDA_DIR" "cuda-toolkit[nvcc,cudart,cccl]==$CUDA_TOOLKIT"
    export CUDA_HOME="$CUDA_DIR/nvidia/cu13"
    # torch's extension builder links -lcudart from $CUDA_HOME/lib64; the wheels name it lib/libcudart.so.13.
    ln -sfn lib "$CUDA_HOME/lib64"
    ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
    "$CUDA_HOME/bin/nvcc" --version | grep -q "release 13\.0,"
fi

SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
"$PY" -m pip download --no-cache-dir --no-deps --no-build-isolation --no-binary gsplat "gsplat==$GSPLAT" -d "$SRC"
tar -xzf "$SRC/gsplat-$GSPLAT.tar.gz" -C "$SRC"
sed -i 's/"-std=c++17"/"-std=c++20"/g' "$SRC/gsplat-$GSPLAT/setup.py"
grep -q '"-std=c++20"' "$SRC/gsplat-$GSPLAT/setup.py" || { echo "gsplat-kernels: no -std=c++17 in gsplat's setup.py to raise" >&2; exit 1; }
if grep -q 'c++17' "$SRC/gsplat-$GSPLAT/setup.py"; then
    echo "gsplat-kernels: gsplat's setup.py still asks for C++17 in a form this recipe does not know" >&2
    exit 1
fi
echo "gsplat-kernels: compiling for ${TORCH_CUDA_ARCH_LIST:-the GPUs torch sees}"
"$PY" -m pip install --no-cache-dir --no-build-isolation --no-deps --force-reinstall "$SRC/gsplat-$GSPLAT"
"$PY" -c "from gsplat import csrc; from gsplat.cuda._backend import _C; assert _C is csrc, 'gsplat did not load its kernels'"
echo "gsplat-kernels: done"
