# The README's commands. `make demo` and `make test` install first when needed,
# so on a fresh clone they are all the set-up there is.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5000
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo train ui dashboard server clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,cluster,dashboard]'
	touch $(STAMP)

# Tests in parallel worker processes (pytest-xdist); WORKERS=0 runs them in this one.
WORKERS ?= auto

test: install
	$(BIN)/python -m pytest -q -n $(WORKERS) --durations=30

test-fast: install
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not slow"

# Offline: a short joint-style sweep on scikit-learn's digits (TPE, pruning,
# a parameter budget), recorded in MLflow, then its ablation report.
# Re-running it resumes the study (it has 10 trials in all).
demo: install
	$(BIN)/python -m sweeps.train hparams_search=demo
	$(BIN)/python -m sweeps.train hparams_search=demo_replicates
	$(BIN)/python -m sweeps.report demo
	$(BIN)/python -m sweeps.report demo_replicates
	@echo
	@echo "Every trial is in MLflow (experiments 'demo' and 'demo_replicates'); the tables are in"
	@echo "reports/demo/report.md and reports/demo_replicates/report.md (3 seeds a row: mean ± std, Welch's test)."
	@echo "Open the UI with:  make ui   (then http://127.0.0.1:$(PORT))"

# `make train ARGS="model=resnet18_trunc optim=sgd"`
train: install
	$(BIN)/python -m sweeps.train $(ARGS)

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port $(PORT)

# The Optuna studies (multirun/optuna.db, or DB=path/to/other.db) in optuna-dashboard,
# on this machine only: http://127.0.0.1:$(DASHBOARD_PORT)
DB             ?= $(CURDIR)/multirun/optuna.db
DASHBOARD_PORT ?= 8080
dashboard:
	@test -x $(BIN)/optuna-dashboard || { echo "error: $(BIN)/optuna-dashboard is missing: run make install" >&2; exit 2; }
	@test -f $(DB) || { echo "error: no study database at $(DB): run a sweep first (make demo), or give DB=path/to/optuna.db" >&2; exit 2; }
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) sqlite:///$(abspath $(DB))

# A tracking server for a lab (README: Running on a cluster): the backend store
# from MLFLOW_BACKEND_STORE_URI (e.g. postgresql://mlflow:<password>@db/mlflow;
# default: mlruns/mlflow.db), artifacts served from mlruns/server-artifacts.
# HOST=0.0.0.0 to serve the whole lab network.
HOST ?= 127.0.0.1
server: install
	$(BIN)/python -m sweeps.server --host $(HOST) --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
