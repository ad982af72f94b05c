# Two commands do all setup on a fresh machine:
#   make demo   generate a synthetic category and run the pipeline on it
#   make test   run the test suite
# Both create (or reuse) the virtual environment in $(VENV) and install the project into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out
EXTRAS ?= cpu,dev

.PHONY: demo test install clean gpu-check docker-smoke

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rpe-pad demo --out $(DEMO)

# Two pytest-xdist workers, a test module to each at a time (tests/conftest.py says why).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# On a GPU host: its own environment with the gpu extra (onnxruntime-gpu), gsplat's CUDA kernels
# compiled into it by the Docker image's recipe (the host's CUDA 13 toolkit, else NVIDIA's
# compiler from PyPI kept in $(GPU_VENV)/cuda-build: no toolkit needed), then the check
# (README, "make gpu-check"). Refuses at once where nvidia-smi finds no GPU.
GPU_VENV ?= .venv-gpu
GPU_OUT  ?= gpu_check
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make gpu-check: no NVIDIA GPU here (nvidia-smi finds none); run it on a CUDA host"; exit 2; }
	$(MAKE) install VENV=$(GPU_VENV) EXTRAS=gpu,dev
	sh docker/gsplat-kernels.sh $(GPU_VENV)/bin/python $(GPU_VENV)/cuda-build
	$(GPU_VENV)/bin/rpe-pad lab gpu-check --out $(GPU_OUT)

# On a machine with a Docker engine (Debian's docker.io) and mmdebstrap, no Docker Hub needed:
# the CPU image (or with SMOKE_TARGET=gpu the GPU one; CUDA_ARCHS=9.0 compiles gsplat's kernels for
# one architecture) built, a demo bundle trained in it, the compose stack proven, then taken down
# (docs/DEPLOY.md, "make docker-smoke"). Opt-in: not part of `make test`.
SMOKE_OUT ?= docker_smoke
SMOKE_TARGET ?= cpu
docker-smoke: $(STAMP)
	$(VENV)/bin/rpe-pad lab docker-smoke --out $(SMOKE_OUT) --target $(SMOKE_TARGET) $(if $(CUDA_ARCHS),--cuda-archs "$(CUDA_ARCHS)")

clean:
	rm -rf $(VENV) $(GPU_VENV) $(DEMO) $(SMOKE_OUT) .pytest_cache
