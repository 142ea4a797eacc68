# make study STUDY=batch-sweep.yaml   run a study (bare names resolve under studies/)
# make test                           run the test suite
# make test-under-load                the signal/fault/Slurm tests beside a bounded CPU load
# make setup                          create .venv with the pinned dependencies
# make setup BACKEND=vllm             also create .venv-vllm (vLLM's CPU build, its own pins)
# make images [BACKEND=vllm] [BASE=image] [VARIANT=cpu]   build backend images (needs a Docker engine)
# make site                           archive every finished study under results/ (running the batch sweep
#                                     when there is none) and write its static explorer to results/site/
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STUDY   ?= batch-sweep.yaml
RESULTS ?= results
RUNNER  ?= auto
ARGS    ?=
STUDY_PATH := $(if $(wildcard $(STUDY)),$(STUDY),studies/$(STUDY))

.PHONY: setup study dry-run test test-under-load doctor images docker-base gpu-check gpu-check-wheels site clean

$(VENV)/.installed: pyproject.toml setup.py requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

# Backends with pins of their own (vLLM: transformers<5.18) run in .venv-<backend>, from
# the same lock file as their CPU image; the host's CPU torch wheel is reused by pip.
.venv-%/.installed: images/%/requirements-cpu.lock
	rm -rf .venv-$*
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install --disable-pip-version-check -q --no-deps -r $<
	.venv-$*/bin/python -c "import $*; print('$*', $*.__version__, 'in .venv-$*')"
	touch $@

setup: $(VENV)/.installed $(if $(BACKEND),.venv-$(BACKEND)/.installed,)

study: setup
	$(BIN)/llem run $(STUDY_PATH) --runner $(RUNNER) -o $(RESULTS) $(ARGS)

dry-run: setup
	$(BIN)/llem run $(STUDY_PATH) --runner $(RUNNER) --dry-run

doctor: setup
	$(BIN)/llem config

# Backend images, tagged by content, for this machine (without a GPU: vLLM's CPU variant,
# and the local CPU base from `make docker-base` where the upstream base is absent).
# BASE=<image> builds on another base, VARIANT=cuda|cpu picks the Dockerfile. Needs only
# llem itself (.venv), not the backends' own environments.
images: $(VENV)/.installed
	$(BIN)/llem images build $(BACKEND) $(if $(BASE),--base $(BASE),) $(if $(VARIANT),--variant $(VARIANT),)

# A local CPU stand-in for the upstream PyTorch base, from Debian packages only.
docker-base:
	images/base/build-local-base.sh llem-base:bookworm-cpu

# vLLM runs for real in the tests (on the CPU), so its environment is part of test set-up.
test: setup .venv-vllm/.installed
	$(BIN)/python -m pytest $(ARGS)

# The tests that signal, kill or time out runs (faults, Ctrl-C, Slurm, parallel runs), beside
# two busy processes: races that only an idle machine hides fail here, not on a user's machine.
test-under-load: setup
	$(BIN)/python -m pytest --cpu-load 2 -m slow -k "fault or ctrl_c or slurm or parallel or interrupt" $(ARGS)

# Every GPU validation in one run (issue 18); without a GPU, its CPU part. OUT=<dir> for the record.
OUT ?= gpu-check
gpu-check: setup
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh $(OUT) $(ARGS)

# llem's dependencies as wheels for a GPU machine with no network (torch, transformers and
# nvidia-ml-py come from that machine): build/gpu-wheels travels with the tree.
PYVER ?= 3.12
gpu-check-wheels:
	$(PYTHON) -m pip download -q --only-binary=:all: --no-deps --python-version $(PYVER) \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d build/gpu-wheels \
	  $$(grep -E '^(pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions|pyarrow|pandas|python-dateutil|tzdata|psutil)==' requirements.lock)
	du -sh build/gpu-wheels

# The results archive and its explorer (issue 20): every finished study under $(RESULTS) is
# added (unfinished ones are said and skipped; adding again changes nothing), then the site.
ARCHIVE ?= $(RESULTS)/archive
SITE    ?= $(RESULTS)/site
site: setup
	@ls $(RESULTS)/*/manifest.json >/dev/null 2>&1 || $(MAKE) study STUDY=batch-sweep.yaml RUNNER=$(RUNNER)
	@for d in $(RESULTS)/*/; do \
	  [ -f "$$d/manifest.json" ] || continue; \
	  $(BIN)/llem archive add "$$d" --archive $(ARCHIVE) || echo "site: skipped $$d (see above)"; \
	done
	$(BIN)/llem site $(ARCHIVE) -o $(SITE)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
