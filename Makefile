# edgeship: set-up, the main job and the test suite.
#   make build   set up, then `dvc repro`: train, build and validate every shipped deployment
#                (recorded in ./mlflow.db)
#   make test    set up, then run the whole test suite (unit, golden, integration)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup build test lint mlflow-ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# Whisper's vocabulary file (the dictation example's tokenizer); its dependencies (CUDA
	# torch, numba) are not needed to read one file
	$(BIN)/pip install --quiet --no-deps openai-whisper==20250625
	$(BIN)/edgeship toolenv install tvm optimum-onnx optimum-intel ort-genai
	touch $(STAMP)

build: setup
	$(BIN)/edgeship toolenv install optimum-onnx optimum-intel
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	bash tools/system-deps.sh
	$(BIN)/python -m pytest -q --durations=30

# lint: ruff, mypy, the import contracts, and the device room's Python 3.8 floor (vermin)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check orchestrator targets registry
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vermin -q -t=3.8- --no-tips --violations orchestrator/device

mlflow-ui: setup
	@echo "builds: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf artifacts mlartifacts mlflow.db models
