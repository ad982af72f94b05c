# The inspection service's images, CPU and GPU, from one file (docs/DEPLOY.md, "Images"):
#
#   docker build --target cpu -t rpe-pad:cpu .      # CPU torch, our rasterizer, onnxruntime
#   docker build -t rpe-pad:gpu .                   # the default (last) target: CUDA 13
#
# Stages, and which image uses them:
#   wheel      the project's wheel (pure Python)            shared by cpu and gpu
#   cpu-venv   torch for CPU + the wheel with the `cpu` extra   cpu
#   cpu        the CPU service (BASE_IMAGE + the venv)          cpu
#   gpu-venv   torch CUDA 13, gsplat's CUDA kernels compiled, the wheel with `gpu`   gpu
#   gpu        the GPU service (BASE_IMAGE + the venv)          gpu
#
# Build arguments:
#   BASE_IMAGE       the Debian image with Python 3.11 that every stage builds on; real
#                    users keep the default. Without Docker Hub,
#                    `make docker-smoke` makes one from Debian's packages (mmdebstrap).
#   TORCH_INDEX_URL  where the CPU image's torch comes from (the CPU-only wheels by default;
#                    empty = the package index pip is configured with)
#   TORCH_CUDA_ARCH_LIST  the GPU architectures gsplat's kernels are compiled for (one
#                    architecture takes about 6 min on 2 cores); MAX_JOBS, its parallel compiles
#   CUDA_TOOLKIT     the `cuda-toolkit` wheels that compile them (CUDA 13.0, torch's)
# Package-index settings (a private mirror, credentials, a proxy's CA) are build secrets,
# mounted only while pip runs and never written to a layer:
#   docker build --secret id=pip,src=pip.conf [--secret id=pip-cert,src=ca.pem] ...
# pip reads the first as /etc/pip.conf; the second lies at /run/secrets/pip-cert, for a
# pip.conf that says `cert = /run/secrets/pip-cert`.
# Needs BuildKit (Docker >= 23, or DOCKER_BUILDKIT=1 on Docker 20.10).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- shared: the project as a wheel. Only the product's packages (no lab/, no tests/).
FROM ${BASE_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY rpe_pad ./rpe_pad
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    python3 -m venv /tmp/build && /tmp/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && rm -rf /tmp/build

# ---- CPU
FROM ${BASE_IMAGE} AS cpu-venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1
COPY --from=wheel /wheels /wheels
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/rpe_pad-*.whl)[cpu]"

FROM ${BASE_IMAGE} AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 rpepad \
    && mkdir -p /data && chown rpepad /data
COPY --from=cpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RPEPAD_BUNDLES=/bundles RPEPAD_DEVICE=cpu RPEPAD_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/opt/numba-cache
# The CPU rasterizer's kernels compiled now, into a cache the service's user owns: a container
# starts without compiling them (models/splat/cpu_kernels.py; about 20 s on 2 cores otherwise).
RUN mkdir /opt/numba-cache && python -c "from models.splat.cpu_kernels import warm; warm()" \
    && chown -R rpepad /opt/numba-cache
USER rpepad
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["rpe-pad"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- GPU, on the same BASE_IMAGE: no CUDA base image is needed. torch 2.14.1's wheel from
# PyPI is the CUDA 13.0 build and brings CUDA's runtime libraries (nvidia-* wheels), which
# onnxruntime-gpu (the `gpu` extra) shares; the host's driver (libcuda) is mounted into the
# container by the NVIDIA Container Toolkit at run time.
# Stage 1: gsplat 1.5.3's CUDA kernels compiled now, for the architectures in
# TORCH_CUDA_ARCH_LIST (the PyPI wheel is pure Python and would JIT-build them on the first
# request, and only where a CUDA toolkit is installed), by docker/gsplat-kernels.sh: NVIDIA's
# CUDA 13.0 compiler from PyPI, in /opt/cuda-build, which stays in this stage, and gsplat's
# source with its C++ standard raised to torch 2.14's (docs/DEPLOY.md, "Images"). The default list
# covers every architecture torch's wheel runs on (sm_75, Turing such as the T4, to sm_120), so
# that no GPU torch accepts fails at gsplat's first render.
FROM ${BASE_IMAGE} AS gpu-venv
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ARG MAX_JOBS=8
ARG CUDA_TOOLKIT=13.0.3.0
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} MAX_JOBS=${MAX_JOBS} CUDA_TOOLKIT=${CUDA_TOOLKIT}
# A C++ compiler, and Python's headers where the base lacks them (Debian's python3 keeps them
# in python3-dev; the python:3.11 images have them).
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && { python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(sysconfig.get_path("include") + "/Python.h"))' \
         || apt-get install -y --no-install-recommends python3-dev; } \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip setuptools wheel ninja \
    && /opt/venv/bin/pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 gsplat==1.5.3
ENV PATH=/opt/venv/bin:$PATH
COPY docker/gsplat-kernels.sh /tmp/gsplat-kernels.sh
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    sh /tmp/gsplat-kernels.sh /opt/venv/bin/python /opt/cuda-build
COPY --from=wheel /wheels /wheels
RUN --mount=type=secret,id=pip,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    pip install --no-cache-dir "$(ls /wheels/rpe_pad-*.whl)[gpu]"

# Stage 2: the service. The virtual environment only: no compiler, no CUDA toolkit.
FROM ${BASE_IMAGE} AS gpu
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 rpepad \
    && mkdir -p /data && chown rpepad /data
COPY --from=gpu-venv /opt/venv /opt/venv
# NVIDIA_*: what the NVIDIA Container Toolkit mounts (the GPUs the runtime grants; the compute
# driver libraries and nvidia-smi), as the nvidia/cuda images declare them.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RPEPAD_BUNDLES=/bundles RPEPAD_DEVICE=auto RPEPAD_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/opt/numba-cache NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The CPU rasterizer's kernels compiled now, into a cache the service's user owns: a container
# starts without compiling them (models/splat/cpu_kernels.py; about 20 s on 2 cores otherwise).
RUN mkdir /opt/numba-cache && python -c "from models.splat.cpu_kernels import warm; warm()" \
    && chown -R rpepad /opt/numba-cache
USER rpepad
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["rpe-pad"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
