# edgecxr developer entry points. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgecxr-installed
EXTRAS ?= train,dev
PYTEST_ARGS ?=

.PHONY: setup test test-all demo lint clean help gpu-check

help:
	@echo "make demo      train a small CoroNet, export, calibrate INT8, verify, infer (a few minutes on CPU)"
	@echo "make test      run the test suite (CPU; GPU tests skip without TensorRT)"
	@echo "make test-all  also the slow tests"
	@echo "make lint      ruff"
	@echo "make triton-check  NVIDIA's tritonserver (nvidia-pytriton, own venv in $(TRITON_VENV)) serves export triton --flavour python; answers over HTTP and gRPC must equal edgecxr infer's"
	@echo "make gpu-check on a machine with TensorRT: build, gate and time FP16/INT8 engines of both reference models (gpu-check-out/gpu-check.json)"
	@echo "make setup     create $(VENV) and install edgecxr[$(EXTRAS)]"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'  # make dist builds with it (SPDX license string)
	@# quiet: setuptools' editable-install notice (a flat layout) is not for users of this checkout
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m edgecxr.stages.demo

# GPU acceptance run (scripts/gpu_check.py, docs/BENCHMARKS.md): refuses in one line, exit 2, without a GPU or TensorRT.
gpu-check: EXTRAS = gpu,dev
gpu-check: setup
	@$(PY) -c "import polygraphy" 2>/dev/null || $(PY) -m pip install -q -e '.[gpu]'
	@$(PY) scripts/gpu_check.py --out gpu-check-out $(GPU_CHECK_ARGS)

# Every wheel a user installs, into dist/ (packaging/build_dist.py, README "Install from wheels"): edgecxr
# (code, build profiles) and one edgecxr-model-<name> per reference model, each <= 100 MiB. Offline: this
# venv's setuptools builds them (no build isolation), installed from the index only where it lacks one.
.PHONY: dist
dist: setup
	@$(PY) -c "import setuptools, wheel" 2>/dev/null || $(PY) -m pip install -q setuptools wheel
	$(PY) packaging/build_dist.py --out dist

lint: setup
	$(VENV)/bin/ruff check edgecxr tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache

# Triton acceptance run (scripts/triton_check.py, docs/SERVING.md "Triton"): NVIDIA's real tritonserver from
# the nvidia-pytriton wheel, in its own venv (with what its Python-backend models import), serves
# `edgecxr export triton --flavour python` and must answer like `edgecxr infer` over HTTP and gRPC.
TRITON_VENV ?= $(HOME)/.cache/edgecxr/triton-check/venv
.PHONY: triton-check
triton-check: setup
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	@ort=$$($(PY) -c "import onnxruntime; print(onnxruntime.__version__)"); \
	$(TRITON_VENV)/bin/python -c "import sys, pytriton, cv2, onnxruntime as o; sys.exit(o.__version__ != '$$ort')" 2>/dev/null || \
		$(TRITON_VENV)/bin/pip install -q nvidia-pytriton "onnxruntime==$$ort" numpy opencv-python-headless
	@$(PY) scripts/triton_check.py --triton-venv $(TRITON_VENV) $(TRITON_CHECK_ARGS)

# aarch64 acceptance run (scripts/arm64_check.py, docs/BENCHMARKS.md "aarch64 under emulation"): the wheels of
# `make dist` in an emulated arm64 Debian root (QEMU_CPU like Jetson Orin's), answers compared with x86. Root,
# qemu-user-static and debootstrap needed; minutes, not part of `make test`.
.PHONY: arm64-check
arm64-check: dist
	@$(PY) scripts/arm64_check.py --wheels dist $(ARM64_CHECK_ARGS)
