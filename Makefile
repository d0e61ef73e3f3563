# Two commands on a fresh machine: `make demo` and `make test`. Both create/reuse .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-lossyvision
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision pinned here only (setup.cfg has ranges), first and again beside every extra, so
	# nothing below can pull another build.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[all,test]' torch==2.14.1 torchvision==0.29.1
	# CompressAI 1.2.8's wheel declares numpy<2, although mbt2018_mean and its entropy coder run on
	# numpy 2 (tests/codecs/test_msh.py). Honouring the pin downgrades numpy and opencv, or on Python 3.13+
	# builds both from old sdists, so its dependencies come from the msh extra instead. `pip check` then
	# reports that one line (tests/test_packaging.py allows exactly it).
	$(BIN)/python -m pip install -q --no-deps compressai==1.2.8
	touch $(STAMP)

install: $(STAMP)

# The codec table, then the main job on real photos that scikit-image ships: the nine settings of
# paper 1, then the report.
demo: $(STAMP)
	$(BIN)/lossyvision codecs
	$(BIN)/lossyvision prepare-shards --dataset samples --out $(DEMO_OUT) --shard-size 6 \
		--codec jpeg --quality 75,10,5 --codec j2k --quality 75,200,400 --codec bpg --quality 41,46,51
	$(BIN)/lossyvision rate-report $(DEMO_OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tools/bench/summary.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
