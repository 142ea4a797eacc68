# make study STUDY=batch-sweep.yaml   run a study (bare names resolve under studies/)
# make test                           run the test suite
# make setup                          create .venv with the pinned dependencies
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STUDY   ?= batch-sweep.yaml
RESULTS ?= results
RUNNER  ?= auto
ARGS    ?=
STUDY_PATH := $(if $(wildcard $(STUDY)),$(STUDY),studies/$(STUDY))

.PHONY: setup study dry-run test doctor clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

study: setup
	$(BIN)/llem run $(STUDY_PATH) --runner $(RUNNER) -o $(RESULTS) $(ARGS)

dry-run: setup
	$(BIN)/llem run $(STUDY_PATH) --runner $(RUNNER) --dry-run

doctor: setup
	$(BIN)/llem config

test: setup
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
