# SEZ — the two commands that matter: `make demo` and `make test`. Both start from a fresh
# Debian machine: `deps` installs what is missing (apt packages, a .venv), `image` builds the
# guest image (quick when it is up to date).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SEZ    := $(BIN)/sez
ZONE   ?= demo
export SEZ_HOME ?= $(HOME)/.sez

.PHONY: deps image boot stop status console demo test bench soak fuzz clean

deps: $(VENV)/.installed
	@bash .ci/install-deps

$(VENV)/.installed: pyproject.toml
	@bash .ci/install-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

image: deps
	$(SEZ) image build

$(SEZ_HOME)/devices/$(ZONE):
	$(SEZ) device new $(ZONE)

boot: image $(SEZ_HOME)/devices/$(ZONE)
	$(SEZ) boot $(ZONE)

stop: deps
	$(SEZ) stop $(ZONE)

status: deps
	$(SEZ) status

console: deps
	$(SEZ) console $(ZONE)

demo: image
	$(SEZ) demo

test: image
	$(BIN)/mypy
	SEZ_REQUIRE_QEMU=1 $(BIN)/pytest -q -p no:cacheprovider tests

# `make bench BENCH_ARGS="--repeat 3"`: bench/results.json and its chart bench/results.png
# (bench/report.py re-draws the chart from the JSON)
bench: image
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# `make soak CYCLES=50 ZONES=1 SOAK_ARGS="--cpus 1 --tcg-thread single"`; reports in soak-reports/
soak: image
	$(BIN)/python bench/soak.py $(if $(CYCLES),--cycles $(CYCLES)) $(if $(ZONES),--zones $(ZONES)) $(SOAK_ARGS)

# `make fuzz CASES=100000 FUZZ_ARGS="--seed 7"`: hostile input against one zone (tests/hostile);
# the report in bench/results/fuzz.json
fuzz: image
	$(BIN)/python bench/fuzz.py $(if $(CASES),--cases $(CASES)) $(FUZZ_ARGS)

clean:
	-$(SEZ) stop $(ZONE) --kill 2>/dev/null
	rm -rf images/build .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
