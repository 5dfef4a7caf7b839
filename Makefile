# The CFT compendium. `make help` lists the targets.
# Environment: the active virtualenv or conda env if there is one, else a .venv in the repository.
SHELL := /bin/bash
PROFILE ?= sandbox
SET ?=
ONLY ?=
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
ifdef VIRTUAL_ENV
  ENV_PREFIX := $(VIRTUAL_ENV)
else ifdef CONDA_PREFIX
  ENV_PREFIX := $(CONDA_PREFIX)
else
  ENV_PREFIX := $(CURDIR)/.venv
endif
PY := $(ENV_PREFIX)/bin/python
STAMP := $(ENV_PREFIX)/.cft-setup.stamp

.PHONY: help setup reproduce findings robustness test test-fast lint bench lab clean clean-artifacts

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  Variables: PROFILE=$(PROFILE) (sandbox | smoke | paper), CFT_HOME (heavy artifacts, default ./artifacts)"
	@echo "    SET=\"key=value ...\"  overrides for every notebook, e.g. SET=\"mitigation.seed=1 training.epochs=2\" (values are"
	@echo "                       YAML, no spaces inside one: [1,5,10]); results land beside the defaults, in */<profile>-<hash>/"
	@echo "    ONLY=\"01 02\"        run only these notebooks (number prefixes)"
	@echo "    LAB_IP=$(LAB_IP) LAB_PORT=$(LAB_PORT)  where make lab listens (LAB_IP=0.0.0.0 to reach it from outside a container)"

$(PY):
	python3 -m venv $(ENV_PREFIX)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m cft_utils.setup_env
	@date > $(STAMP)

setup: $(STAMP) ## Create/refresh the environment (pinned torch 2.13 CPU wheel), register the Jupyter kernel, IFEval data
	@echo "environment: $(ENV_PREFIX)"

reproduce: setup ## Execute the notebooks with papermill for PROFILE (SET=overrides, ONLY=notebooks): reports/<name>/index.html
	$(PY) -m cft_utils.reproduce --profile $(PROFILE) $(if $(strip $(ONLY)),--only $(ONLY)) $(foreach kv,$(SET),--set '$(kv)')

findings: setup ## After make reproduce: snapshot results/PROFILE/claims.csv into data/findings/ and regenerate the README's findings
	$(PY) -m cft_utils.report.findings --profile $(PROFILE) --snapshot

# The sandbox's longer budget before issue 15 (cft_utils.report.robustness.LONGER_BUDGET, the same settings)
LONGER_BUDGET = training.epochs=4 phase2_training.epochs=2 evaluation.benchmarks.IFEval.limit=400 \
	evaluation.benchmarks.AlpacaEval.limit=400 evaluation.benchmarks.HellaSwag.limit=400 \
	evaluation.benchmarks.MLQA.limit=120 evaluation.benchmarks.XQuAD.limit=120 evaluation.benchmarks.XLSum.limit=120

robustness: setup ## Verdicts under another world seed, a more English pre-training and the 43-minute budget (three more sandbox reproduces, ~4x its time; ONLY= as for reproduce)
	$(PY) -m cft_utils.reproduce --profile $(PROFILE) --set sandbox.seed=4321 $(if $(strip $(ONLY)),--only $(ONLY))
	$(PY) -m cft_utils.reproduce --profile $(PROFILE) --set sandbox.english_share=0.8 $(if $(strip $(ONLY)),--only $(ONLY))
	$(PY) -m cft_utils.reproduce --profile $(PROFILE) $(foreach kv,$(LONGER_BUDGET),--set '$(kv)') $(if $(strip $(ONLY)),--only $(ONLY))
	$(PY) -m cft_utils.report.robustness --profile $(PROFILE)

test: setup ## Run the whole test suite (what CI runs)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

test-fast: setup ## Tests without the slow ones (no training, no notebooks)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

lint: setup ## Ruff on the package, tests and benchmarks
	$(PY) -m ruff check cft_utils tests bench

bench: setup ## Benchmarks: ratios against the baselines users would pick -> bench/RESULTS.md (~15 min; QUICK=1: fast check)
	$(PY) bench/run_all.py $(if $(QUICK),--quick)

lab: setup ## JupyterLab on the notebooks with the project's kernel (prints its URL; LAB_IP, LAB_PORT; works as root)
	$(PY) -m jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) --ServerApp.root_dir=$(CURDIR)/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

clean: ## Remove generated reports, results and figures (keeps artifacts and the environment)
	rm -rf reports results figures/*/

clean-artifacts: ## Remove heavy artifacts (models, checkpoints) under CFT_HOME or ./artifacts
	rm -rf $${CFT_HOME:-artifacts}
