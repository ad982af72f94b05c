# Placeholder image for the foundation stage: installs the package on a CUDA 13 runtime
# with the GPU extra and exposes the `rpe-pad` command. The inspection service, gsplat's
# CUDA kernels compiled at build time and the compose files arrive with the service issue.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY rpe_pad ./rpe_pad
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[gpu]"
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["rpe-pad"]
CMD ["--help"]
