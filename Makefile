# omnitune: the two commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omnitune-installed
# The pinned torch trio (see pyproject.toml): installed first so that nothing pulls another torch.
TORCH_PINS := torch==2.14.1 torchaudio==2.11.0 torchvision==0.29.1
# llama-cpp-python (the `export` extra's GGUF runtime) has no wheel on PyPI and builds from
# source: for any x86-64 CPU (no -march=native: pip's wheel cache may move to another machine),
# at -O1 and without its multimodal library, 4.5 minutes on 2 cores instead of about 15.
# LLAMA_CPP_ARGS="-DGGML_NATIVE=ON" builds it for this CPU at full speed.
LLAMA_CPP_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_C_FLAGS_RELEASE=-O1 -DCMAKE_CXX_FLAGS_RELEASE=-O1
PYTEST_ARGS ?=
# Debian packages the tests drive for real: Prometheus (server and promtool), headless Chromium.
SYSTEM_PACKAGES := prometheus prometheus-alertmanager chromium chromium-driver
SYSTEM_COMMANDS := prometheus promtool prometheus-alertmanager amtool chromium chromedriver

.PHONY: demo test test-fast reliability bench bench-peers lint layers format venv clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(TORCH_PINS)
	@# setuptools' notice that an editable install imports from this folder is true and known;
	@# silenced by its message alone (the wheel build in the tests sees every other warning).
	PYTHONWARNINGS="ignore:Editable installation" CMAKE_ARGS="$(LLAMA_CPP_ARGS)" \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# SERVE=1 leaves the monitor daemon and the dashboard running; FORCE=1 re-runs every step.
demo: $(STAMP)
	$(PY) -m scripts.demo $(if $(SERVE),--serve) $(if $(FORCE),--force)

# Installs the Debian packages above when one of their commands is missing (as root, as on CI
# and the developers' machines; elsewhere it says what to install and stops).
system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(SYSTEM_PACKAGES) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "the tests need: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

# Two pytest processes side by side (the machine's 2 cores): the unit and integration tests,
# and the docs' console sessions with the demo they follow (their servers use the docs' fixed
# ports, so they run one after another), then BALANCE: the packaging test, the loop's Whisper
# and LLaVA tests and the slowest trainer files, moved from the unit lane so that the two
# lanes end together (the unit lane runs on one core: a 35-minute unit lane beside an
# 18-minute docs lane left a core idle for 17 minutes; with the export tests in the unit lane
# it ran 27:36 beside 24:14, so they moved too). The unit lane's processes use
# one torch thread each (OMP_NUM_THREADS=1), so that the two lanes do not oversubscribe the
# cores; runs that set train.num_threads still get what they set. The docs lane's OpenMP
# threads sleep at barriers rather than spin (OMP_WAIT_POLICY=PASSIVE): beside the other lane,
# spinning threads wait for a descheduled partner (tests/forkserver.py: SERVER_ENV has the
# figures). Both must pass; the docs' report is printed last.
BALANCE := tests/test_packaging.py tests/trainers/test_loop_media.py \
  tests/trainers/test_moe.py tests/trainers/test_merge.py tests/trainers/test_distill.py \
  tests/trainers/test_prune.py tests/trainers/test_deploy.py
DOCS_LANE := README.md docs tests/test_demo.py $(BALANCE)
test: $(STAMP) system-deps
	@OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest $(DOCS_LANE) $(PYTEST_ARGS) > .pytest-docs.log 2>&1 & \
	docs=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m pytest tests --ignore=tests/test_demo.py \
	  $(addprefix --ignore=,$(BALANCE)) $(PYTEST_ARGS); unit=$$?; \
	wait $$docs; docs_status=$$?; \
	echo "=== README.md, docs/, make demo and $(BALANCE) ==="; \
	cat .pytest-docs.log; \
	test $$unit -eq 0 && test $$docs_status -eq 0

# Hostile inputs, crashes and faults; their figures are written into docs/reliability.md.
reliability: $(STAMP) system-deps
	$(PY) -m pytest -m reliability $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser and not prometheus" $(PYTEST_ARGS)

# Peers measured side by side whose pins clash with ours (alibi-detect 0.13: numpy<2,
# transformers<5) get their own virtualenv, Evidently with them; it borrows the project's
# torch through a .pth file. TRL, the training peer, is in the project's own venv ([train]).
PEERS := bench/.venv-peers
$(PEERS)/.installed: $(STAMP) Makefile
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q alibi-detect==0.13.0 evidently==0.7.23
	$(PEERS)/bin/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], \
	  'zz-omnitune-torch.pth').write_text('$(abspath $(VENV))/lib/python3.11/site-packages\n')"
	touch $@

bench-peers: $(PEERS)/.installed

bench: $(STAMP) bench-peers system-deps
	$(PY) -m bench.run

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/check_layers.py

# The import layers of pyproject.toml's [tool.importlinter] (also part of make lint and make test).
layers: $(STAMP)
	$(PY) scripts/check_layers.py

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
