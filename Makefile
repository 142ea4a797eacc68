# make study STUDY=batch-sweep.yaml   run a study (bare names resolve under studies/)
# make test                           run the test suite
# make test-under-load                the signal/fault/Slurm tests beside a bounded CPU load
# make setup                          create .venv with the pinned dependencies
# make images [BACKEND=pytorch] [BASE=image]   build backend images (needs a Docker engine)
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STUDY   ?= batch-sweep.yaml
RESULTS ?= results
RUNNER  ?= auto
ARGS    ?=
STUDY_PATH := $(if $(wildcard $(STUDY)),$(STUDY),studies/$(STUDY))

.PHONY: setup study dry-run test test-under-load doctor images docker-base clean

$(VENV)/.installed: pyproject.toml setup.py requirements.lock
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

# Backend images, tagged by content. BASE=<image> builds on another base
# (e.g. the local CPU base from `make docker-base`).
images: setup
	$(BIN)/llem images build $(if $(BACKEND),$(BACKEND),) $(if $(BASE),--base $(BASE),)

# A local CPU stand-in for the upstream PyTorch base, from Debian packages only.
docker-base:
	images/base/build-local-base.sh llem-base:bookworm-cpu

test: setup
	$(BIN)/python -m pytest $(ARGS)

# The tests that signal, kill or time out runs (faults, Ctrl-C, Slurm, parallel runs), beside
# two busy processes: races that only an idle machine hides fail here, not on a user's machine.
test-under-load: setup
	$(BIN)/python -m pytest --cpu-load 2 -m slow -k "fault or ctrl_c or slurm or parallel or interrupt" $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
