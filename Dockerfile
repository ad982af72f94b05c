# The inspection service on a CUDA GPU host (docker/docker-compose.yml runs it).
#
# Stage 1 (devel image, has nvcc): install torch 2.14.1 (CUDA 13 wheel), build gsplat
# 1.5.3 from its source distribution so its CUDA kernels are compiled now, for the
# architectures in TORCH_CUDA_ARCH_LIST (the PyPI wheel is pure Python and would JIT-build
# them on the first request), then the package with onnxruntime-gpu (the `gpu` extra).
# Stage 2 (runtime image): the virtual environment only. Bundles are mounted at /bundles.
ARG CUDA_TAG=13.0.0-cudnn
FROM nvidia/cuda:${CUDA_TAG}-devel-ubuntu22.04 AS build
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ENV DEBIAN_FRONTEND=noninteractive TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} MAX_JOBS=8
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
        build-essential git && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --upgrade pip setuptools wheel ninja \
    && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
RUN pip install --no-cache-dir --no-build-isolation --no-binary gsplat gsplat==1.5.3 \
    && python -c "import gsplat, importlib.util as u; assert u.find_spec('gsplat.csrc') is not None, 'gsplat CUDA kernels not built'"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY rpe_pad ./rpe_pad
RUN pip install --no-cache-dir ".[gpu]"

FROM nvidia/cuda:${CUDA_TAG}-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 curl libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 rpepad \
    && mkdir -p /data && chown rpepad /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RPEPAD_BUNDLES=/bundles RPEPAD_DEVICE=auto RPEPAD_DATA_DIR=/data
USER rpepad
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["rpe-pad"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
