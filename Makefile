# The README's commands. `make demo` and `make test` install first when needed,
# so on a fresh clone they are all the set-up there is.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5000
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo train ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Offline: a short joint-style sweep on scikit-learn's digits (TPE, pruning,
# a parameter budget), recorded in MLflow, then its ablation report.
# Re-running it resumes the study (it has 10 trials in all).
demo: install
	$(BIN)/python -m sweeps.train --multirun hparams_search=demo
	$(BIN)/python -m sweeps.report demo
	@echo
	@echo "Every trial is in MLflow (experiment 'demo'); the table is in reports/demo/report.md."
	@echo "Open the UI with:  make ui   (then http://127.0.0.1:$(PORT))"

# `make train ARGS="model=resnet18_trunc optim=sgd"`
train: install
	$(BIN)/python -m sweeps.train $(ARGS)

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
